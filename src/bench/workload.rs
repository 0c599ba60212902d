//! What the load generator sends: synthetic prompts of given token-length distributions
//! (token counts from a local tokenizer or the server's `/tokenize`) or a JSONL dataset.

use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::frontend::tokenizer::Tokenizer;

/// A distribution of token counts: `256` (fixed), `128..512` (uniform, inclusive) or
/// `normal:256,64` (normal, rounded and clipped to at least 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LengthDist {
    Fixed(u32),
    Uniform { min: u32, max: u32 },
    Normal { mean: f64, std_dev: f64 },
}

impl LengthDist {
    /// One draw, at least 1.
    pub fn sample(&self, rng: &mut impl Rng) -> u32 {
        match *self {
            LengthDist::Fixed(n) => n,
            LengthDist::Uniform { min, max } => rng.random_range(min..=max),
            LengthDist::Normal { mean, std_dev } => {
                // Box–Muller: one standard normal from two uniforms.
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (mean + std_dev * z).round().max(1.0) as u32
            }
        }
    }

    /// The largest value a draw can take (a normal's is mean + 6 σ).
    pub fn max(&self) -> u32 {
        match *self {
            LengthDist::Fixed(n) => n,
            LengthDist::Uniform { max, .. } => max,
            LengthDist::Normal { mean, std_dev } => (mean + 6.0 * std_dev).ceil().max(1.0) as u32,
        }
    }
}

impl FromStr for LengthDist {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let count = |v: &str| -> Result<u32, String> {
            match v.trim().parse::<u32>() {
                Ok(0) => Err(format!("{s:?}: token counts must be at least 1")),
                Ok(n) => Ok(n),
                Err(_) => Err(format!("{s:?}: {v:?} is not a token count")),
            }
        };
        if let Some(rest) = s.strip_prefix("normal:") {
            let (mean, sd) = rest
                .split_once(',')
                .ok_or_else(|| format!("{s:?}: expected normal:MEAN,STD_DEV"))?;
            let mean = f64::from(count(mean)?);
            let std_dev: f64 = sd
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: {sd:?} is not a standard deviation"))?;
            if !(std_dev >= 0.0 && std_dev.is_finite()) {
                return Err(format!("{s:?}: the standard deviation must be >= 0"));
            }
            return Ok(LengthDist::Normal { mean, std_dev });
        }
        if let Some((min, max)) = s.split_once("..") {
            let (min, max) = (count(min)?, count(max)?);
            if min > max {
                return Err(format!("{s:?}: the minimum is above the maximum"));
            }
            return Ok(LengthDist::Uniform { min, max });
        }
        count(s).map(LengthDist::Fixed)
    }
}

/// Which OpenAI endpoint the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// `/v1/completions` with a text prompt (exact prompt lengths: no chat template).
    Completions,
    /// `/v1/chat/completions` with one user message (the template adds a few tokens).
    Chat,
}

/// The prompt of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    /// Chat messages, as the dataset gave them.
    Messages(Value),
}

/// One request to send.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSpec {
    pub prompt: Prompt,
    pub max_tokens: u32,
}

impl RequestSpec {
    /// The streaming request body for `api`. `ignore_eos` asks the server (vLLM, surge,
    /// llama.cpp) to generate exactly `max_tokens`.
    pub fn body(&self, api: Api, model: &str, ignore_eos: bool) -> anyhow::Result<Value> {
        let mut body = json!({
            "model": model,
            "max_tokens": self.max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        match (api, &self.prompt) {
            (Api::Completions, Prompt::Text(t)) => body["prompt"] = json!(t),
            (Api::Chat, Prompt::Text(t)) => {
                body["messages"] = json!([{"role": "user", "content": t}])
            }
            (Api::Chat, Prompt::Messages(m)) => body["messages"] = m.clone(),
            (Api::Completions, Prompt::Messages(_)) => {
                bail!("a dataset entry with `messages` needs --api chat")
            }
        }
        if ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        Ok(body)
    }
}

/// Reads a JSONL dataset: one object a line with `prompt` (a string) or `messages` (an
/// array of chat messages), and optionally `max_tokens` (or `output_tokens`). Blank lines
/// are skipped; anything else is an error naming the line.
pub fn read_dataset(
    path: &Path,
    default_output: LengthDist,
    seed: u64,
) -> anyhow::Result<Vec<RequestSpec>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the dataset {}", path.display()))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut specs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), i + 1);
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let prompt = match (v.get("prompt"), v.get("messages")) {
            (Some(Value::String(p)), None) => Prompt::Text(p.clone()),
            (None, Some(m @ Value::Array(items))) if !items.is_empty() => {
                Prompt::Messages(m.clone())
            }
            _ => bail!(
                "{}: expected a string `prompt` or a non-empty `messages` array (not both)",
                at()
            ),
        };
        let max_tokens = match v.get("max_tokens").or_else(|| v.get("output_tokens")) {
            None => default_output.sample(&mut rng),
            Some(n) => match n.as_u64() {
                Some(n @ 1..=0xFFFF_FFFF) => n as u32,
                _ => bail!("{}: max_tokens must be a positive integer, got {n}", at()),
            },
        };
        specs.push(RequestSpec { prompt, max_tokens });
    }
    if specs.is_empty() {
        bail!("the dataset {} has no entries", path.display());
    }
    Ok(specs)
}

/// Where synthetic prompts get their token counts from.
pub enum TokenizerSource {
    /// A local model directory (`tokenizer.json`).
    Local(Box<Tokenizer>),
    /// The server's vLLM-style `/tokenize` and `/detokenize`.
    Server {
        client: reqwest::Client,
        base_url: String,
        model: String,
    },
}

impl TokenizerSource {
    /// The tokenizer of a Hugging Face layout directory.
    pub fn local(dir: &Path) -> anyhow::Result<TokenizerSource> {
        let tokenizer = Tokenizer::from_hf_dir(dir)
            .with_context(|| format!("cannot load the tokenizer of {}", dir.display()))?;
        Ok(TokenizerSource::Local(Box::new(tokenizer)))
    }

    async fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        match self {
            TokenizerSource::Local(t) => Ok(t.encode(text, false)?),
            TokenizerSource::Server { .. } => {
                let body = json!({"prompt": text, "add_special_tokens": false});
                let v = self.post("/tokenize", body).await?;
                let tokens = v["tokens"]
                    .as_array()
                    .context("/tokenize answered without `tokens`")?;
                tokens
                    .iter()
                    .map(|t| {
                        t.as_u64()
                            .map(|t| t as u32)
                            .context("/tokenize: a token id is not a number")
                    })
                    .collect()
            }
        }
    }

    async fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        match self {
            TokenizerSource::Local(t) => Ok(t.decode(ids, true)?),
            TokenizerSource::Server { .. } => {
                let v = self.post("/detokenize", json!({"tokens": ids})).await?;
                Ok(v["prompt"]
                    .as_str()
                    .context("/detokenize answered without `prompt`")?
                    .to_string())
            }
        }
    }

    async fn post(&self, path: &str, mut body: Value) -> anyhow::Result<Value> {
        let TokenizerSource::Server {
            client,
            base_url,
            model,
        } = self
        else {
            unreachable!("post is only called on the server source");
        };
        body["model"] = json!(model);
        let url = format!("{base_url}{path}");
        let response = client
            .post(&url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url} (pass --tokenizer DIR for servers without it)"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!(
                "POST {url}: {status}: {text} (pass --tokenizer DIR for servers without /tokenize)"
            );
        }
        serde_json::from_str(&text).with_context(|| format!("POST {url}: not JSON: {text}"))
    }
}

/// Words for synthetic text: common, so every tokenizer has them as one or two tokens.
const WORDS: &[&str] = &[
    "the", "time", "people", "water", "world", "house", "river", "light", "story", "music",
    "garden", "city", "morning", "winter", "summer", "mountain", "window", "friend", "market",
    "letter", "number", "simple", "quiet", "bright", "small", "large", "early", "later", "walks",
    "reads", "builds", "finds", "opens", "brings", "keeps", "turns", "shows", "under", "over",
    "between", "before", "after", "around", "through", "because", "while", "table", "paper",
    "stone", "forest", "island", "engine", "signal", "question", "answer", "history", "science",
    "color", "animal", "bird", "ocean", "road", "bridge", "school",
];

/// Synthetic requests: `n` prompts of `prompt_tokens` tokens each (as `tokenizer`
/// counts them, without special tokens) and `output_tokens` to generate. Each prompt is
/// a different slice of one random word text, so prompts share no prefix a cache could
/// reuse.
pub async fn synthetic(
    tokenizer: &TokenizerSource,
    n: usize,
    prompt_tokens: LengthDist,
    output_tokens: LengthDist,
    seed: u64,
) -> anyhow::Result<Vec<RequestSpec>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let longest = prompt_tokens.max() as usize;
    // Enough text that any prompt can start anywhere in its first half.
    let want = 2 * longest + 64;
    let mut num_words = want;
    let corpus = loop {
        let text: Vec<&str> = (0..num_words)
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect();
        let ids = tokenizer.encode(&text.join(" ")).await?;
        if ids.len() >= want {
            break ids;
        }
        num_words *= 2;
    };
    let mut specs = Vec::with_capacity(n);
    for _ in 0..n {
        let len = prompt_tokens.sample(&mut rng) as usize;
        let start = rng.random_range(0..=corpus.len() - len);
        let prompt = tokenizer.decode(&corpus[start..start + len]).await?;
        specs.push(RequestSpec {
            prompt: Prompt::Text(prompt.trim_start().to_string()),
            max_tokens: output_tokens.sample(&mut rng),
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_distributions_parse_and_sample_in_range() {
        assert_eq!("64".parse(), Ok(LengthDist::Fixed(64)));
        assert_eq!("8..32".parse(), Ok(LengthDist::Uniform { min: 8, max: 32 }));
        assert_eq!(
            "normal:100,10".parse(),
            Ok(LengthDist::Normal {
                mean: 100.0,
                std_dev: 10.0
            })
        );
        for bad in ["0", "x", "9..3", "normal:5", "normal:5,-1", "1..0"] {
            assert!(bad.parse::<LengthDist>().is_err(), "{bad}");
        }
        let mut rng = StdRng::seed_from_u64(1);
        let u = LengthDist::Uniform { min: 8, max: 32 };
        let n = LengthDist::Normal {
            mean: 100.0,
            std_dev: 10.0,
        };
        let draws: Vec<u32> = (0..2000).map(|_| n.sample(&mut rng)).collect();
        let mean = draws.iter().map(|&d| f64::from(d)).sum::<f64>() / draws.len() as f64;
        assert!((mean - 100.0).abs() < 1.5, "normal mean {mean}");
        assert!(draws.iter().all(|&d| d <= n.max()));
        assert!((0..2000)
            .map(|_| u.sample(&mut rng))
            .all(|d| (8..=32).contains(&d)));
    }

    #[test]
    fn dataset_lines_become_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(
            &path,
            "{\"prompt\": \"hi\", \"max_tokens\": 7}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"yo\"}]}\n",
        )
        .unwrap();
        let specs = read_dataset(&path, LengthDist::Fixed(3), 0).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].prompt, Prompt::Text("hi".into()));
        assert_eq!(specs[0].max_tokens, 7);
        assert_eq!(specs[1].max_tokens, 3);
        let body = specs[1].body(Api::Chat, "m", true).unwrap();
        assert_eq!(body["messages"][0]["content"], "yo");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["ignore_eos"], true);
        assert!(specs[1].body(Api::Completions, "m", true).is_err());
        let body = specs[0].body(Api::Completions, "m", false).unwrap();
        assert_eq!(body["prompt"], "hi");
        assert!(body.get("ignore_eos").is_none());

        for (bad, why) in [
            ("{\"prompt\": 3}\n", "prompt"),
            ("{\"prompt\": \"a\", \"max_tokens\": 0}\n", "max_tokens"),
            ("not json\n", "not JSON"),
            ("\n\n", "no entries"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = format!(
                "{:#}",
                read_dataset(&path, LengthDist::Fixed(3), 0).unwrap_err()
            );
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
