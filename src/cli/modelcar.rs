//! `surge modelcar build DIR --push oci://…`: write a ModelCar image (the model under
//! /models) from a local model dir and push it, without a container engine.

use anyhow::Context;
use clap::{Args, Subcommand};

use surge::config::RegistryArgs;
use surge::loader::oci::writer::{self, Compression, ModelCarSpec};
use surge::loader::oci::OciReference;

#[derive(Args, Debug)]
pub struct ModelCarArgs {
    #[command(subcommand)]
    command: ModelCarCommand,
}

#[derive(Subcommand, Debug)]
enum ModelCarCommand {
    /// Build a ModelCar image from a model dir and push it to a registry.
    Build(BuildArgs),
}

#[derive(Args, Debug)]
struct BuildArgs {
    /// The model dir (Hugging Face layout); its files become /models/… in the image.
    dir: std::path::PathBuf,
    /// Where to push: `oci://host[:port]/repo:tag`.
    #[arg(long)]
    push: String,
    /// Spread the files over at most this many layers (by size).
    #[arg(long, default_value_t = 3)]
    layers: usize,
    #[arg(long, value_enum, default_value_t = Compression::Gzip)]
    compression: Compression,
    /// Platform as os/arch; repeat for an image index with one manifest per platform.
    #[arg(long = "platform", default_value = "linux/amd64")]
    platforms: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub fn run(args: ModelCarArgs) -> anyhow::Result<()> {
    let ModelCarCommand::Build(args) = args.command;
    let image = OciReference::parse(&args.push)?;
    let work = std::env::temp_dir().join(format!("surge-modelcar-{}", std::process::id()));
    let spec = ModelCarSpec {
        dir: args.dir.clone(),
        max_layers: args.layers,
        compression: args.compression,
        platforms: args.platforms.clone(),
        work_dir: work.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let pushed = runtime.block_on(writer::build_and_push(
        &spec,
        &image,
        &args.registry.registry_options(),
    ));
    let _ = std::fs::remove_dir_all(&work);
    let digest = pushed.with_context(|| format!("building {} into {image}", args.dir.display()))?;
    tracing::info!("pushed {image} ({digest})");
    println!("{digest}");
    Ok(())
}
