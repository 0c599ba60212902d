//! `surge pull <source>`: fetch an `oci://` image into the cache (progress bar on a
//! terminal), then print the local model dir on stdout.

use clap::Args;

use surge::config::RegistryArgs;
use surge::loader::oci::{self, OciReference};

#[derive(Args, Debug)]
pub struct PullArgs {
    /// `oci://host[:port]/repo:tag` or `oci://host[:port]/repo@sha256:…`.
    source: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(args: PullArgs) -> anyhow::Result<()> {
    let image = OciReference::parse(&args.source)?;
    let options = args.registry.pull_options();
    // The error names the image already.
    let pulled = oci::pull_blocking(&image, &options)?;
    tracing::info!(
        digest = %pulled.digest,
        cached = pulled.cached,
        "{image} is at {}",
        pulled.dir.display()
    );
    println!("{}", pulled.dir.display());
    Ok(())
}
