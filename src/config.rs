//! Command-line flags and `SURGE_*` environment variables shared by subcommands, with
//! vLLM's names, turned into validated engine settings. The only reader of the env.

use clap::Args;

use crate::engine::EngineConfig;
use crate::loader::hf_hub::HubSettings;
use crate::loader::{DTypeChoice, FetchSettings, LoadFormat, LoadOptions};

/// Which model, in which dtype, on which device.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model directory (Hugging Face layout) or .gguf file; default: the demo model
    /// (SmolLM2-135M-Instruct fetched by tests/support/fetch-models.sh).
    #[arg(long, env = "SURGE_MODEL")]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value_t = DTypeChoice::Auto, env = "SURGE_DTYPE")]
    pub dtype: DTypeChoice,
    /// auto | cpu | cuda[:N].
    #[arg(long, default_value = "auto", env = "SURGE_DEVICE")]
    pub device: String,
    /// auto: the model's weights; dummy: random weights of its config.json's shapes, made
    /// on the device (a directory with config.json and tokenizer.json is enough; for
    /// benchmarks, e.g. tests/support/llama-3.1-8b/config.json + the Llama 3 tokenizer).
    #[arg(long, value_enum, default_value_t = LoadFormat::Auto, env = "SURGE_LOAD_FORMAT")]
    pub load_format: LoadFormat,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// How `oci://` models are pulled: registries, credentials, and the local cache.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Speak plain HTTP to this registry (HOST:PORT); repeat or comma-separate for more.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        value_delimiter = ',',
        env = "SURGE_INSECURE_REGISTRY"
    )]
    pub insecure_registry: Vec<String>,
    /// Registry credentials, docker config.json / podman auth.json format; default: podman's
    /// auth.json, then $DOCKER_CONFIG/config.json or ~/.docker/config.json.
    #[arg(long, value_name = "FILE", env = "REGISTRY_AUTH_FILE")]
    pub registry_auth_file: Option<std::path::PathBuf>,
    /// Where pulled images are cached (under oci/); default ~/.cache/surge.
    #[arg(long, value_name = "DIR", env = "SURGE_CACHE")]
    pub cache_dir: Option<std::path::PathBuf>,
    /// Image layers downloaded at once.
    #[arg(long, default_value_t = crate::loader::oci::DEFAULT_CONCURRENT_DOWNLOADS, env = "SURGE_MAX_CONCURRENT_DOWNLOADS")]
    pub max_concurrent_downloads: usize,
}

impl RegistryArgs {
    /// Registries and the credential files to look in.
    pub fn registry_options(&self) -> crate::loader::oci::RegistryOptions {
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let mut defaults = Vec::new();
        if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
            defaults.push(std::path::Path::new(&runtime).join("containers/auth.json"));
        }
        match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => defaults.push(std::path::Path::new(&dir).join("config.json")),
            None => defaults.extend(home.map(|h| h.join(".docker/config.json"))),
        }
        crate::loader::oci::RegistryOptions {
            insecure_registries: self.insecure_registry.clone(),
            auth: crate::loader::oci::AuthFiles {
                explicit: self.registry_auth_file.clone(),
                defaults,
            },
        }
    }

    /// Everything a pull needs; the progress bar only when stderr is a terminal.
    pub fn pull_options(&self) -> crate::loader::oci::PullOptions {
        let cache_dir = self.cache_dir.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map_or_else(|| std::path::PathBuf::from("."), std::path::PathBuf::from)
                .join(".cache/surge")
        });
        crate::loader::oci::PullOptions {
            cache_dir,
            registry: self.registry_options(),
            max_concurrent_downloads: self.max_concurrent_downloads.max(1),
            progress_bar: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

impl ModelArgs {
    /// How to reach remote model sources: the registry flags, and the hub's settings
    /// from the environment ([`hub_settings`]).
    pub fn fetch_settings(&self) -> FetchSettings {
        FetchSettings {
            hub: hub_settings(),
            oci: self.registry.pull_options(),
        }
    }

    /// `--dtype` and `--load-format`, for [`crate::loader::load_with`].
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            dtype: self.dtype,
            load_format: self.load_format,
        }
    }

    /// `--model`, or the demo model when it is absent.
    pub fn model_or_demo(&self) -> anyhow::Result<String> {
        if let Some(model) = &self.model {
            return Ok(model.clone());
        }
        let cache = std::env::var_os("SURGE_MODEL_CACHE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(".cache/models"));
        let demo = cache.join("smollm2-hf");
        anyhow::ensure!(
            demo.join("config.json").is_file(),
            "no --model given and the demo model is not at {}: fetch it with `bash tests/support/fetch-models.sh` (from the surge repository), or pass --model",
            demo.display()
        );
        Ok(demo.display().to_string())
    }
}

/// The engine's limits.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Longest sequence (prompt + output); defaults to the model's, or what the KV cache holds.
    #[arg(long, env = "SURGE_MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,
    #[arg(long, default_value_t = 256, env = "SURGE_MAX_NUM_SEQS")]
    pub max_num_seqs: usize,
    #[arg(long, default_value_t = 2048, env = "SURGE_MAX_NUM_BATCHED_TOKENS")]
    pub max_num_batched_tokens: usize,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16, env = "SURGE_BLOCK_SIZE")]
    pub block_size: usize,
    /// KV cache budget on CPU, e.g. 4GiB or 512MiB.
    #[arg(long, default_value = "4GiB", env = "SURGE_KV_CACHE_MEMORY")]
    pub kv_cache_memory: bytesize::ByteSize,
    /// On a GPU: the share of its memory surge may use in all (weights, activations and
    /// the KV cache, which gets what the other two leave), in (0, 1].
    #[arg(long, default_value_t = 0.9, env = "SURGE_GPU_MEMORY_UTILIZATION")]
    pub gpu_memory_utilization: f64,
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    #[arg(long, env = "SURGE_NO_ENABLE_PREFIX_CACHING")]
    pub no_enable_prefix_caching: bool,
    /// Requests waiting beyond this are refused (HTTP 429).
    #[arg(long, env = "SURGE_MAX_NUM_QUEUED_REQS")]
    pub max_num_queued_reqs: Option<usize>,
    /// Prompt tokens waiting beyond this are refused (HTTP 429); one request is always
    /// let into an empty queue.
    #[arg(long, env = "SURGE_MAX_NUM_QUEUED_TOKENS")]
    pub max_num_queued_tokens: Option<usize>,
}

impl EngineArgs {
    pub fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        anyhow::ensure!(self.block_size > 0, "--block-size must be at least 1");
        anyhow::ensure!(self.max_num_seqs > 0, "--max-num-seqs must be at least 1");
        anyhow::ensure!(
            self.max_num_batched_tokens > 0,
            "--max-num-batched-tokens must be at least 1"
        );
        anyhow::ensure!(
            self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0,
            "--gpu-memory-utilization must be in (0, 1], not {}",
            self.gpu_memory_utilization
        );
        Ok(EngineConfig {
            block_size: self.block_size,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            kv_cache_memory: usize::try_from(self.kv_cache_memory.as_u64())?,
            gpu_memory_utilization: self.gpu_memory_utilization,
            max_model_len: self.max_model_len,
            enable_prefix_caching: !self.no_enable_prefix_caching,
            max_num_queued_reqs: self.max_num_queued_reqs,
            max_num_queued_tokens: self.max_num_queued_tokens,
        })
    }
}

/// The HTTP front of `surge serve`: TLS, slow-client limits, CORS, the per-request
/// deadline and request logging.
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// PEM certificate chain: serve HTTPS instead of HTTP (needs --ssl-keyfile).
    #[arg(long, value_name = "FILE", env = "SURGE_SSL_CERTFILE")]
    pub ssl_certfile: Option<std::path::PathBuf>,
    /// PEM private key of --ssl-certfile.
    #[arg(long, value_name = "FILE", env = "SURGE_SSL_KEYFILE")]
    pub ssl_keyfile: Option<std::path::PathBuf>,
    /// A client must send a request's headers within this, or the connection is closed
    /// (slow clients, slowloris); also how long an idle keep-alive connection stays open
    /// and how long a TLS handshake may take. 0 turns it off.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, env = "SURGE_HTTP_HEADER_READ_TIMEOUT")]
    pub http_header_read_timeout: std::time::Duration,
    /// A request's body must arrive whole within this, or 408. 0 turns it off.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, env = "SURGE_HTTP_BODY_READ_TIMEOUT")]
    pub http_body_read_timeout: std::time::Duration,
    /// Largest request line plus headers, in bytes; larger gets 431 and the connection
    /// is closed.
    #[arg(long, default_value_t = 64 << 10, env = "SURGE_MAX_HEADER_BYTES")]
    pub max_header_bytes: usize,
    /// Most headers in one request; more gets 431 and the connection is closed.
    #[arg(long, default_value_t = 100, env = "SURGE_MAX_HEADER_COUNT")]
    pub max_header_count: usize,
    /// Generations still running this long after they were admitted end: 504 (or, when
    /// streaming, `finish_reason: "abort"`, an error event and `[DONE]`); e.g. 10m.
    /// Off by default; 0 is off.
    #[arg(long, value_parser = humantime::parse_duration, env = "SURGE_REQUEST_TIMEOUT")]
    pub request_timeout: Option<std::time::Duration>,
    /// Browser origins allowed by CORS (e.g. https://app.example, or *): comma list, JSON
    /// list or repeated. Without it, no CORS headers are sent.
    #[arg(long, value_name = "ORIGINS", env = "SURGE_ALLOWED_ORIGINS")]
    pub allowed_origins: Vec<String>,
    /// Methods allowed by CORS (default *); needs --allowed-origins.
    #[arg(long, value_name = "METHODS", env = "SURGE_ALLOWED_METHODS")]
    pub allowed_methods: Vec<String>,
    /// Request headers allowed by CORS (default *); needs --allowed-origins.
    #[arg(long, value_name = "HEADERS", env = "SURGE_ALLOWED_HEADERS")]
    pub allowed_headers: Vec<String>,
    /// Log each request's prompt (first 512 characters) and parameters. Without it, no
    /// request content is logged.
    #[arg(
        long,
        visible_alias = "enable-log-requests",
        env = "SURGE_LOG_REQUESTS"
    )]
    pub log_requests: bool,
}

impl HttpArgs {
    /// How connections are taken: TLS files (read when the listener starts), limits.
    pub fn listener_config(&self) -> anyhow::Result<crate::api::listener::ListenerConfig> {
        let tls = match (&self.ssl_certfile, &self.ssl_keyfile) {
            (Some(certfile), Some(keyfile)) => Some(crate::api::tls::TlsFiles {
                certfile: certfile.clone(),
                keyfile: keyfile.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => anyhow::bail!("--ssl-certfile needs --ssl-keyfile"),
            (None, Some(_)) => anyhow::bail!("--ssl-keyfile needs --ssl-certfile"),
        };
        anyhow::ensure!(
            self.max_header_bytes >= 1024,
            "--max-header-bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.max_header_count >= 1,
            "--max-header-count must be at least 1"
        );
        Ok(crate::api::listener::ListenerConfig {
            header_read_timeout: Some(self.http_header_read_timeout).filter(|t| !t.is_zero()),
            max_header_bytes: self.max_header_bytes,
            max_header_count: self.max_header_count,
            tls,
        })
    }

    /// The router's body limits and CORS.
    pub fn router_config(
        &self,
        max_request_body_bytes: usize,
    ) -> anyhow::Result<crate::api::RouterConfig> {
        let cors = crate::api::cors::CorsConfig::parse(
            &self.allowed_origins,
            &self.allowed_methods,
            &self.allowed_headers,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(crate::api::RouterConfig {
            max_request_body_bytes,
            body_read_timeout: Some(self.http_body_read_timeout).filter(|t| !t.is_zero()),
            cors,
        })
    }
}

/// Lets candle's CPU matmuls use every CPU this process may run on. candle sizes its
/// thread pool from `RAYON_NUM_THREADS`, else from its count of physical cores, which
/// comes out as 1 on some virtual machines and halves throughput on a 2-CPU host. A
/// value the user set is kept. Call first thing in `main`, before any thread starts.
pub fn default_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// The Hugging Face hub's settings from the environment: `HF_HUB_OFFLINE` and `HF_TOKEN`
/// (hf-hub itself reads `HF_HOME` and `HF_ENDPOINT`).
pub fn hub_settings() -> HubSettings {
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    });
    HubSettings {
        offline,
        token: std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()),
    }
}
