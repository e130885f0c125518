# Sourced by gpu_side_by_side.sh and gpu_check.sh: puts the CUDA 13 / cuDNN 9 libraries that
# PyTorch's wheels ship (site-packages/nvidia/*/lib, torch/lib) on LD_LIBRARY_PATH, where the
# dfbench CUDA binaries (cudarc links them dynamically) find them. DFB_NO_TORCH_LIBS=1 skips it.
if [ -z "${DFB_NO_TORCH_LIBS:-}" ]; then
  __dfb_libs=$(python3 - <<'PY'
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for pat in ("nvidia/*/lib", "torch/lib"):
        dirs += sorted(glob.glob(os.path.join(sp, pat)))
print(":".join(dirs))
PY
)
  export LD_LIBRARY_PATH="$__dfb_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  unset __dfb_libs
fi
