//! PyTorch checkpoints (`torch.save`'s zip format, PyTorch >= 1.6): every tensor of the state
//! dict, or of the dict nested under one key.
//!
//! candle's pickle machine decodes `data.pkl`; the archive is opened here with its offset fixed
//! at 0 because the zip crate's offset detection, which `candle_core::pickle::read_all` uses,
//! rejects some valid files written by `torch.save` ("Invalid Central Directory header"). One
//! archive serves every tensor (candle reopens the file per tensor).
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{Result, Tensor};
use zip::ZipArchive;
use zip::read::{ArchiveOffset, Config};

fn err(path: &Path, msg: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: cannot read PyTorch checkpoint: {msg}", path.display()))
}

/// The tensors of a dict object, by name (non-tensor entries are skipped).
fn tensor_infos(entries: Vec<(Object, Object)>, dir: &Path) -> Result<Vec<TensorInfo>> {
    let mut out = Vec::new();
    for (name, value) in entries {
        if let Some(info) = value.into_tensor_info(name, dir)? {
            out.push(info);
        }
    }
    Ok(out)
}

/// Tensors by name.
pub type NamedTensors = Vec<(String, Tensor)>;

/// Reads every tensor of the checkpoint's top-level dict or, when that holds none, of the first
/// of `nesting_keys` whose value is a dict of tensors. Returns the tensors and the key used.
pub fn read(path: &Path, nesting_keys: &[&str]) -> Result<(NamedTensors, Option<String>)> {
    let open = || -> Result<ZipArchive<BufReader<std::fs::File>>> {
        let file = std::fs::File::open(path).map_err(|e| err(path, e))?;
        let cfg = Config { archive_offset: ArchiveOffset::Known(0) };
        ZipArchive::with_config(cfg, BufReader::new(file)).map_err(|e| err(path, e))
    };
    let mut zip = open()?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("data.pkl"))
        .map(|n| n.into_owned())
        .ok_or_else(|| err(path, "no data.pkl in the archive"))?;
    let dir = std::path::PathBuf::from(pkl.strip_suffix(".pkl").unwrap_or(&pkl));
    let obj = {
        let reader = zip.by_name(&pkl).map_err(|e| err(path, e))?;
        let mut stack = Stack::empty();
        stack.read_loop(&mut BufReader::new(reader)).map_err(|e| err(path, e))?;
        stack.finalize().map_err(|e| err(path, e))?
    };
    let Object::Dict(entries) = obj else {
        return Err(err(path, "the pickled object is not a dict (a pickled whole model is not read; save its `state_dict()`)"));
    };
    let mut infos = tensor_infos(entries.clone(), &dir)?;
    let mut used = None;
    if infos.is_empty() {
        for key in nesting_keys {
            let nested = entries.iter().find(|(k, _)| matches!(k, Object::Unicode(s) if s == key));
            if let Some((_, Object::Dict(inner))) = nested {
                infos = tensor_infos(inner.clone(), &dir)?;
                if !infos.is_empty() {
                    used = Some(key.to_string());
                    break;
                }
            }
        }
    }
    let mut tensors = Vec::with_capacity(infos.len());
    for info in infos {
        tensors.push((info.name.clone(), read_tensor(&mut zip, &info).map_err(|e| err(path, format!("`{}`: {e}", info.name)))?));
    }
    Ok((tensors, used))
}

fn read_tensor<R: Read + std::io::Seek>(zip: &mut ZipArchive<R>, info: &TensorInfo) -> Result<Tensor> {
    let mut reader = zip.by_name(&info.path).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let layout = &info.layout;
    let fortran = layout.is_fortran_contiguous();
    if !layout.is_contiguous() && !fortran {
        candle_core::bail!("a non-contiguous tensor (strides {:?}) is not read; save `.contiguous()` copies", layout.stride());
    }
    // candle records the offset in bytes already.
    let skip = layout.start_offset() as u64;
    std::io::copy(&mut reader.by_ref().take(skip), &mut std::io::sink())?;
    let rank = layout.shape().rank();
    let mut bytes = vec![0u8; layout.shape().elem_count() * info.dtype.size_in_bytes()];
    reader.read_exact(&mut bytes)?;
    let cpu = candle_core::Device::Cpu;
    if rank > 1 && fortran && !layout.is_contiguous() {
        // Column-major storage: read the reversed shape, then reverse the axes.
        let reversed: Vec<usize> = layout.dims().iter().rev().copied().collect();
        let t = Tensor::from_raw_buffer(&bytes, info.dtype, &reversed, &cpu)?;
        let axes: Vec<usize> = (0..rank).rev().collect();
        return t.permute(axes)?.contiguous();
    }
    Tensor::from_raw_buffer(&bytes, info.dtype, layout.dims(), &cpu)
}
