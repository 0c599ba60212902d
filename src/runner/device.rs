//! `--device auto|cpu|cuda[:N]`: where the model runs.

use candle_core::Device;

/// A parsed `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA device 0 when one is usable, else the CPU (with a log line saying why).
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(ordinal)) => Ok(Self::Cuda(ordinal)),
                _ => anyhow::bail!("--device {s:?}: expected auto, cpu, cuda or cuda:N"),
            },
        }
    }
}

/// Opens the device `--device` names: a clear error when CUDA is asked for and not usable.
pub fn select_device(name: &str) -> anyhow::Result<Device> {
    match name.parse::<DeviceChoice>()? {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(ordinal) => cuda(ordinal),
        DeviceChoice::Auto => match cuda(0) {
            Ok(device) => {
                tracing::info!("--device auto: using cuda:0");
                Ok(device)
            }
            Err(e) => {
                tracing::info!("--device auto: running on CPU ({e:#})");
                Ok(Device::Cpu)
            }
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> anyhow::Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        anyhow::anyhow!("no usable CUDA device cuda:{ordinal} ({e}); check the NVIDIA driver and CUDA_VISIBLE_DEVICES, or use --device cpu")
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(ordinal: usize) -> anyhow::Result<Device> {
    anyhow::bail!("cuda:{ordinal} asked for, but this build of surge has no CUDA support (build it with --features cuda)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        for bad in ["", "gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "metal"] {
            let e = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(
                e.contains("expected auto, cpu, cuda or cuda:N"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn auto_falls_back_to_cpu_without_a_usable_gpu() {
        // On a host with a usable GPU and a cuda build, auto picks it; everywhere else the CPU.
        let device = select_device("auto").unwrap();
        if cuda(0).is_err() {
            assert!(device.is_cpu());
        } else {
            assert!(device.is_cuda());
        }
        assert!(select_device("cpu").unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_on_a_cpu_build_is_a_clear_error() {
        let e = select_device("cuda:1").unwrap_err().to_string();
        assert!(
            e.contains("no CUDA support") && e.contains("--features cuda"),
            "{e}"
        );
    }
}
