//! Device selection from a protocol or `--device` string: `cpu`, `cuda`, `cuda:N`.
use candle_core::Device;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`; expected `cpu`, `cuda` or `cuda:N`")]
    Unknown(String),
    #[error("device `{0}` asked for, but this build has no CUDA support; rebuild with `--features cuda`")]
    NoCudaBuild(String),
    #[error("device `{name}` could not be opened: {source}")]
    Open { name: String, source: candle_core::Error },
}

/// Checks that `spec` names a device this build can use, without opening it: `None` for the
/// CPU, `Some(ordinal)` for CUDA. A dry run calls this so that it fails where a real run would
/// on configuration alone, even on a machine (a login node) without the GPU.
pub fn check(spec: &str) -> Result<Option<usize>, DeviceError> {
    let s = spec.trim();
    if s == "cpu" {
        return Ok(None);
    }
    let ordinal = if s == "cuda" {
        0
    } else if let Some(n) = s.strip_prefix("cuda:") {
        n.parse::<usize>().map_err(|_| DeviceError::Unknown(spec.to_string()))?
    } else {
        return Err(DeviceError::Unknown(spec.to_string()));
    };
    if !cfg!(feature = "cuda") {
        return Err(DeviceError::NoCudaBuild(spec.to_string()));
    }
    Ok(Some(ordinal))
}

/// Parses and opens a device. Never silently falls back to the CPU.
pub fn open(spec: &str) -> Result<Device, DeviceError> {
    match check(spec)? {
        None => Ok(Device::Cpu),
        Some(ordinal) => {
            // candle's own default is off; apply the process-wide choice before the first matmul.
            #[cfg(feature = "cuda")]
            candle_core::cuda_backend::set_gemm_reduced_precision_f32(tf32_enabled());
            let dev = Device::new_cuda(ordinal).map_err(|source| DeviceError::Open { name: spec.to_string(), source })?;
            disable_event_tracking(&dev);
            Ok(dev)
        }
    }
}

/// Stops cudarc from recording two CUDA events per allocation and use (its multi-stream
/// bookkeeping): candle and every dfbench op issue all work on the device's one stream, where
/// stream order already makes reuse safe.
#[cfg(feature = "cuda")]
fn disable_event_tracking(dev: &Device) {
    if let Ok(d) = dev.as_cuda_device() {
        // SAFETY: single stream (see above); applies to tensors created from now on.
        unsafe { d.disable_event_tracking() };
    }
}

#[cfg(not(feature = "cuda"))]
fn disable_event_tracking(_dev: &Device) {}

/// Whether float32 matmuls and convolutions on a CUDA device may use TF32 tensor cores (10-bit
/// mantissa products, f32 accumulation), as PyTorch's `allow_tf32` does. On by default, as the
/// papers' PyTorch runs had it on Ampere and later GPUs; the CPU never uses it.
static TF32: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns TF32 on or off for every CUDA matmul and convolution issued afterwards (process-wide,
/// like candle's cuBLAS setting it drives). Custom CUDA ops read [`tf32_enabled`].
pub fn set_tf32(on: bool) {
    TF32.store(on, std::sync::atomic::Ordering::Relaxed);
    #[cfg(feature = "cuda")]
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(on);
}

/// See [`set_tf32`].
pub fn tf32_enabled() -> bool {
    TF32.load(std::sync::atomic::Ordering::Relaxed)
}

/// A human-readable description for manifests.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        Device::Cuda(_) => describe_cuda(device),
        Device::Metal(_) => "metal".to_string(),
    }
}

/// `cuda:N (GPU name)`, so a manifest says which card produced its numbers.
#[cfg(feature = "cuda")]
fn describe_cuda(device: &Device) -> String {
    let ordinal = match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
        _ => 0,
    };
    match device.as_cuda_device().map(|d| d.cuda_stream().context().name()) {
        Ok(Ok(name)) => format!("cuda:{ordinal} ({name})"),
        _ => format!("cuda:{ordinal}"),
    }
}

#[cfg(not(feature = "cuda"))]
fn describe_cuda(_device: &Device) -> String {
    "cuda".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_garbage() {
        assert!(matches!(open("cpu"), Ok(Device::Cpu)));
        assert!(matches!(open("gpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(open("cuda:x"), Err(DeviceError::Unknown(_))));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_clear_error() {
        let e = open("cuda:0").unwrap_err();
        assert!(e.to_string().contains("--features cuda"), "{e}");
    }
}
