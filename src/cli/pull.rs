//! `surge pull <source>`: fetch a remote model into its cache, then print the local model
//! dir on stdout. An `oci://` image goes into surge's cache (progress bar on a terminal);
//! a hub id into the Hugging Face cache (`HF_HOME`), so that a later `serve` of it works
//! with `HF_HUB_OFFLINE=1`.

use clap::Args;

use surge::config::{hub_settings, RegistryArgs};
use surge::loader::{hf_hub, oci, ModelSource};

#[derive(Args, Debug)]
pub struct PullArgs {
    /// `oci://host[:port]/repo:tag`, `oci://host[:port]/repo@sha256:…`, or a Hugging Face
    /// hub id `org/name[@revision]`.
    source: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(args: PullArgs) -> anyhow::Result<()> {
    // The errors name the source already.
    let dir = match ModelSource::parse(&args.source)? {
        ModelSource::Oci(image) => {
            let pulled = oci::pull_blocking(&image, &args.registry.pull_options())?;
            tracing::info!(
                digest = %pulled.digest,
                cached = pulled.cached,
                "{image} is at {}",
                pulled.dir.display()
            );
            pulled.dir
        }
        ModelSource::HfHub(model) => {
            let dir = hf_hub::fetch(&model, &hub_settings())?;
            tracing::info!("{} is at {}", args.source, dir.display());
            dir
        }
        ModelSource::Local(_) | ModelSource::Gguf(_) => anyhow::bail!(
            "`{}` is a local model: nothing to pull (pull takes oci://… or a hub id org/name)",
            args.source
        ),
    };
    println!("{}", dir.display());
    Ok(())
}
