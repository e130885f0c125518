# Sourced by gpu_side_by_side.sh and gpu_check.sh on the GPU machine:
# - puts the CUDA 13 / cuDNN 9 libraries that PyTorch's wheels ship (site-packages/nvidia/*/lib,
#   torch/lib) on LD_LIBRARY_PATH, where the dfbench CUDA binaries (cudarc links them
#   dynamically) find them; DFB_NO_TORCH_LIBS=1 skips this;
# - sets DFB_BUNDLE to a directory holding the binaries of scripts/build_cuda_bundle.sh: unpacked
#   from cuda-bundle/bundle.tar.xz into /tmp/dfb-bundle once (what is carried to the machine is the
#   compressed archive: ~50 MB per binary is mostly candle's PTX, which xz shrinks ~10x).
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
if [ -z "${DFB_BUNDLE:-}" ]; then
  if [ -f cuda-bundle/bundle.tar.xz ]; then
    DFB_BUNDLE=/tmp/dfb-bundle
    if [ ! -x "$DFB_BUNDLE/gpu_train_step" ] || [ cuda-bundle/bundle.tar.xz -nt "$DFB_BUNDLE/gpu_train_step" ]; then
      mkdir -p "$DFB_BUNDLE" && tar -xJf cuda-bundle/bundle.tar.xz -C "$DFB_BUNDLE"
    fi
  else
    DFB_BUNDLE=cuda-bundle
  fi
  export DFB_BUNDLE
fi
