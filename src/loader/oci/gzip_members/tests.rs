use std::io::{Read, Write};

use rand::{RngCore, SeedableRng};

use super::*;

fn weights(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut bytes);
    // Like bf16 weights: every other byte takes one of 8 values, so deflate has work.
    for b in bytes.iter_mut().skip(1).step_by(2) {
        *b = 0x3c + (*b & 7);
    }
    bytes
}

fn framed(data: &[u8]) -> Vec<u8> {
    let mut writer = MemberWriter::new(Vec::new());
    writer.write_all(data).unwrap();
    writer.finish().unwrap()
}

fn single_member(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// `gz` read on the reading thread and on a pool of 3: both must agree.
fn read_members(gz: &[u8]) -> std::io::Result<Vec<u8>> {
    let read = |threads| {
        let mut out = Vec::new();
        MemberReader::with_threads(gz, threads)
            .read_to_end(&mut out)
            .map(|_| out)
    };
    let (inline, pooled) = (read(1), read(3));
    match (&inline, &pooled) {
        (Ok(a), Ok(b)) => assert!(a == b, "the pool inflated other bytes"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("inline {inline:?}, pooled {pooled:?}"),
    }
    inline
}

/// The lengths of the framed members of `gz`, walking their headers.
fn member_lens(gz: &[u8]) -> Vec<usize> {
    let mut lens = Vec::new();
    let mut at = 0;
    while at < gz.len() {
        let h: [u8; HEADER_LEN] = gz[at..at + HEADER_LEN].try_into().unwrap();
        let len = framed_len(&h).expect("a framed member");
        lens.push(len);
        at += len;
    }
    assert_eq!(at, gz.len());
    lens
}

#[test]
fn framed_members_round_trip_and_any_gzip_reader_reads_them() {
    let data = weights(9 * MEMBER_BYTES + 12_345);
    let gz = framed(&data);
    assert_eq!(member_lens(&gz).len(), 10);
    assert!(
        gz.len() < data.len() * 9 / 10,
        "deflate saved too little: {} of {}",
        gz.len(),
        data.len()
    );
    assert_eq!(read_members(&gz).unwrap(), data);

    let mut standard = Vec::new();
    flate2::bufread::MultiGzDecoder::new(&gz[..])
        .read_to_end(&mut standard)
        .unwrap();
    assert_eq!(standard, data);

    let mut gzip = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip is installed");
    let mut stdin = gzip.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&gz).unwrap());
    let out = gzip.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, data);
}

#[test]
fn a_plain_gzip_stream_and_one_that_ends_unframed_are_streamed() {
    let data = weights(MEMBER_BYTES + 999);
    assert_eq!(read_members(&single_member(&data)).unwrap(), data);

    let mut mixed = framed(&data);
    mixed.extend(single_member(b"tail"));
    mixed.extend(framed(b"more"));
    let mut expected = data.clone();
    expected.extend_from_slice(b"tailmore");
    assert_eq!(read_members(&mixed).unwrap(), expected);

    assert_eq!(read_members(&[]).unwrap(), b"");
}

#[test]
fn a_member_larger_than_the_cap_is_streamed_not_inflated_whole() {
    let data = vec![0u8; MAX_MEMBER + 1];
    let mut compressor = Compressor::new(LEVEL);
    let mut deflated = vec![0; compressor.deflate_compress_bound(data.len())];
    let n = compressor.deflate_compress(&data, &mut deflated).unwrap();
    let mut gz = header((HEADER_LEN + n + TRAILER_LEN) as u32).to_vec();
    gz.extend_from_slice(&deflated[..n]);
    gz.extend_from_slice(&libdeflater::crc32(&data).to_le_bytes());
    gz.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let mut reader = MemberReader::new(&gz[..]);
    let mut first = [1u8; 16];
    reader.read_exact(&mut first).unwrap();
    assert!(reader.is_streaming());
    assert!(!reader.has_inflated(), "the member was inflated whole");
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert_eq!(first.len() + rest.len(), data.len());
    assert!(first.iter().chain(&rest).all(|&b| b == 0));
}

#[test]
fn corrupt_or_cut_members_are_errors() {
    let data = weights(100_000);
    let gz = framed(&data);
    let len = gz.len();

    let mut bad_crc = gz.clone();
    bad_crc[len - TRAILER_LEN] ^= 1;
    let e = read_members(&bad_crc).unwrap_err();
    assert!(e.to_string().contains("CRC-32"), "{e}");

    let mut bad_size = gz.clone();
    bad_size[len - 4] ^= 1;
    let e = read_members(&bad_size).unwrap_err();
    assert!(e.to_string().contains("trailer says"), "{e}");

    let mut bad_data = gz.clone();
    for b in &mut bad_data[HEADER_LEN..HEADER_LEN + 64] {
        *b = 0xff;
    }
    let e = read_members(&bad_data).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");

    let e = read_members(&gz[..len - 1]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
}
