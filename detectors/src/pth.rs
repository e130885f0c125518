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

/// `torch.save`'s legacy (pre-1.6) stream: the magic-number pickle, protocol version and system
/// info pickles, the object, the list of storage keys, then each storage as an 8-byte element
/// count and its raw bytes. The files of 2017-2019 (Cadene's Xception, efficientnet_pytorch's
/// weights, as DeepfakeBench ships them) are in this format.
pub fn read_legacy(path: &Path, nesting_keys: &[&str]) -> Result<(NamedTensors, Option<String>)> {
    use std::collections::HashMap;
    const MAGIC: [u8; 15] =
        [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.'];
    let file = std::fs::File::open(path).map_err(|e| err(path, e))?;
    let mut r = BufReader::new(file);
    let mut head = [0u8; 15];
    r.read_exact(&mut head).map_err(|e| err(path, e))?;
    if head != MAGIC {
        return Err(err(path, "not a PyTorch checkpoint (neither the zip nor the legacy format)"));
    }
    let mut next = || -> Result<Object> {
        let mut stack = Stack::empty();
        stack.read_loop(&mut r).map_err(|e| err(path, e))?;
        stack.finalize().map_err(|e| err(path, e))
    };
    let _protocol_version = next()?;
    let _sys_info = next()?;
    let obj = next()?;
    let keys = next()?;
    let Object::Dict(entries) = obj else {
        return Err(err(path, "the pickled object is not a dict (a pickled whole model is not read; save its `state_dict()`)"));
    };
    let mut infos = legacy_infos(entries.clone());
    let mut used = None;
    if infos.is_empty() {
        for key in nesting_keys {
            let nested = entries.iter().find(|(k, _)| matches!(k, Object::Unicode(s) if s == key));
            if let Some((_, Object::Dict(inner))) = nested {
                infos = legacy_infos(inner.clone());
                if !infos.is_empty() {
                    used = Some(key.to_string());
                    break;
                }
            }
        }
    }
    let keys: Vec<String> = match keys {
        Object::List(v) | Object::Tuple(v) => v.into_iter().filter_map(|k| k.unicode().ok()).collect(),
        _ => return Err(err(path, "the storage key list is missing")),
    };
    // Element sizes of every storage the dict and its nested dicts use (an optimizer state's
    // storages come in the same stream and must be stepped over).
    let mut elem_size: HashMap<String, usize> = HashMap::new();
    let nested = entries.iter().filter_map(|(_, v)| match v {
        Object::Dict(d) => Some(legacy_infos(d.clone())),
        _ => None,
    });
    for i in legacy_infos(entries.clone()).iter().chain(nested.flatten().collect::<Vec<_>>().iter()) {
        elem_size.insert(i.key.clone(), i.dtype.size_in_bytes());
    }
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for key in keys {
        let mut count = [0u8; 8];
        r.read_exact(&mut count).map_err(|e| err(path, format!("storage {key}: {e}")))?;
        let n = u64::from_le_bytes(count) as usize;
        let size = *elem_size
            .get(key.as_str())
            .ok_or_else(|| err(path, format!("storage {key} belongs to no tensor of the state dict; re-save the state dict alone")))?;
        let bytes_len = n.checked_mul(size).filter(|&b| b <= 1 << 36).ok_or_else(|| err(path, "implausible storage size"))?;
        let mut bytes = vec![0u8; bytes_len];
        r.read_exact(&mut bytes).map_err(|e| err(path, format!("storage {key}: {e}")))?;
        storages.insert(key, bytes);
    }
    let mut tensors = Vec::with_capacity(infos.len());
    for info in infos {
        let bytes = storages.get(&info.key).ok_or_else(|| err(path, format!("`{}`: storage {} missing", info.name, info.key)))?;
        let t = info.build(bytes).map_err(|e| err(path, format!("`{}`: {e}", info.name)))?;
        tensors.push((info.name, t));
    }
    Ok((tensors, used))
}

struct LegacyInfo {
    name: String,
    key: String,
    dtype: candle_core::DType,
    shape: Vec<usize>,
    stride: Vec<usize>,
    offset: usize,
}

impl LegacyInfo {
    fn build(&self, bytes: &[u8]) -> Result<Tensor> {
        let n: usize = self.shape.iter().product();
        let mut contiguous = vec![1usize; self.shape.len()];
        for d in (0..self.shape.len().saturating_sub(1)).rev() {
            contiguous[d] = contiguous[d + 1] * self.shape[d + 1];
        }
        if n > 1 && self.stride != contiguous {
            candle_core::bail!("a non-contiguous tensor (strides {:?}) is not read", self.stride);
        }
        let size = self.dtype.size_in_bytes();
        let start = self.offset * size;
        let end = start + n * size;
        if end > bytes.len() {
            candle_core::bail!("storage too short ({} bytes, the tensor needs {end})", bytes.len());
        }
        Tensor::from_raw_buffer(&bytes[start..end], self.dtype, &self.shape, &candle_core::Device::Cpu)
    }
}

/// The tensors of a legacy state dict: `_rebuild_tensor_v2` (PyTorch >= 0.4) or `_rebuild_tensor`
/// calls, possibly wrapped in `_rebuild_parameter`, on a persistent storage id
/// `('storage', FloatStorage, key, location, size[, view])`.
fn legacy_infos(entries: Vec<(Object, Object)>) -> Vec<LegacyInfo> {
    entries.into_iter().filter_map(|(k, v)| legacy_info(k.unicode().ok()?, v)).collect()
}

fn legacy_info(name: String, value: Object) -> Option<LegacyInfo> {
    let (mut callable, mut args) = value.reduce().ok()?;
    if matches!(&callable, Object::Class { class_name, .. } if class_name == "_rebuild_parameter") {
        let mut a = args.tuple().ok()?;
        if a.is_empty() {
            return None;
        }
        (callable, args) = a.remove(0).reduce().ok()?;
    }
    match callable {
        Object::Class { module_name, class_name }
            if module_name == "torch._utils" && (class_name == "_rebuild_tensor_v2" || class_name == "_rebuild_tensor") => {}
        _ => return None,
    }
    let mut a = args.tuple().ok()?;
    if a.len() < 4 {
        return None;
    }
    let ints = |o: Object| -> Option<Vec<usize>> {
        match o {
            Object::Tuple(v) | Object::List(v) => v
                .into_iter()
                .map(|x| match x {
                    Object::Int(i) if i >= 0 => Some(i as usize),
                    Object::Long(i) if i >= 0 => Some(i as usize),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    };
    let stride = ints(a.remove(3))?;
    let shape = ints(a.remove(2))?;
    let offset = match a.remove(1) {
        Object::Int(i) if i >= 0 => i as usize,
        Object::Long(i) if i >= 0 => i as usize,
        _ => return None,
    };
    let mut storage = a.remove(0).persistent_load().ok()?.tuple().ok()?;
    if storage.len() < 5 {
        return None;
    }
    let key = storage.remove(2).unicode().ok()?;
    let (_, class_name) = storage.remove(1).class().ok()?;
    use candle_core::DType;
    let dtype = match class_name.as_str() {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" => DType::U8,
        "LongStorage" => DType::I64,
        _ => return None,
    };
    (shape.len() == stride.len()).then_some(LegacyInfo { name, key, dtype, shape, stride, offset })
}
