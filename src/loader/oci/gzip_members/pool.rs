//! Framed gzip members inflated on a few threads of their own, handed back in order.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use libdeflater::Decompressor;

use super::reader::{deflated, inflate, invalid, Member};

/// One member to inflate, with the buffers to do it in.
struct Job {
    member: Vec<u8>,
    m: Member,
    out: Vec<u8>,
    done: mpsc::SyncSender<Done>,
}

/// An inflated member, with its compressed buffer back for reuse.
struct Done {
    result: std::io::Result<()>,
    out: Vec<u8>,
    member: Vec<u8>,
}

pub struct InflatePool {
    jobs: Option<mpsc::Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Members in flight, oldest first.
    pending: VecDeque<mpsc::Receiver<Done>>,
    depth: usize,
    spare_members: Vec<Vec<u8>>,
    spare_outs: Vec<Vec<u8>>,
}

impl InflatePool {
    pub fn new(threads: usize) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let workers = (0..threads)
            .map(|_| {
                let queue = queue.clone();
                std::thread::spawn(move || work(&queue))
            })
            .collect();
        Self {
            jobs: Some(jobs),
            workers,
            pending: VecDeque::new(),
            depth: threads * 2,
            spare_members: Vec::new(),
            spare_outs: Vec::new(),
        }
    }

    pub fn has_room(&self) -> bool {
        self.pending.len() < self.depth
    }

    /// Sends the member held in `member` to be inflated; `member` gets a spare buffer.
    pub fn submit(&mut self, member: &mut Vec<u8>, m: Member) {
        let spare = self.spare_members.pop().unwrap_or_default();
        let member = std::mem::replace(member, spare);
        let (done, receive) = mpsc::sync_channel(1);
        let out = self.spare_outs.pop().unwrap_or_default();
        let job = Job {
            member,
            m,
            out,
            done,
        };
        if let Some(jobs) = &self.jobs {
            // A send fails only when every worker is gone; `next` then reports it.
            let _ = jobs.send(job);
        }
        self.pending.push_back(receive);
    }

    /// The oldest member in flight, inflated; `None` when none is in flight.
    pub fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let Some(receive) = self.pending.pop_front() else {
            return Ok(None);
        };
        let done = receive
            .recv()
            .map_err(|_| invalid("an inflating thread stopped".to_string()))?;
        self.spare_members.push(done.member);
        done.result.map(|()| Some(done.out))
    }

    /// Takes back a buffer that `next` gave out.
    pub fn recycle(&mut self, out: Vec<u8>) {
        if out.capacity() > 0 {
            self.spare_outs.push(out);
        }
    }
}

impl Drop for InflatePool {
    fn drop(&mut self) {
        // Closing the queue stops each worker after the jobs already sent.
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn work(queue: &Mutex<mpsc::Receiver<Job>>) {
    let mut decompressor = Decompressor::new();
    loop {
        let job = queue.lock().expect("the job queue").recv();
        let Ok(mut job) = job else {
            return;
        };
        job.out.resize(job.m.size, 0);
        let result = inflate(
            &mut decompressor,
            deflated(&job.member, &job.m),
            &mut job.out,
            job.m.crc,
        );
        let _ = job.done.send(Done {
            result,
            out: job.out,
            member: job.member,
        });
    }
}
