#!/usr/bin/env sh
# Build llama.cpp's environment (`make llamacpp`): llama-cpp-python and its OpenAI-compatible server from
# source, then, from the same llama.cpp source and build, the quantizer and importance-matrix programs and
# the converter with its gguf package.
#
#   sh scripts/install-llamacpp.sh VENV VERSION
#
# One compile: llama-cpp-python's build directory (VENV/build) is kept, and the two programs reuse its
# libraries, so only their own sources compile after it (seconds). The converter (share/llama.cpp/) runs in
# the compression environment, which has torch; the programs go to VENV/bin.
set -eu
venv=$1; version=$2
root=$(cd "$venv" && pwd)
src="$root/src/llama_cpp_python-$version"
rm -rf "$root/src" "$root/build"
mkdir -p "$root/src"
"$venv/bin/pip" download --no-deps --no-binary :all: -d "$root/src" "llama-cpp-python==$version"
tar -xzf "$src.tar.gz" -C "$root/src"
# A CPU that lists AMX may still refuse its tile instructions (a virtual machine that does not pass them on):
# llama.cpp built for the native CPU would then die of SIGILL in its first quantized matmul. A probe that asks
# the kernel for AMX and runs one tile instruction decides; without AMX, the native build leaves it out.
flags=""
if grep -q amx_tile /proc/cpuinfo 2>/dev/null; then
  probe="$root/build-amx-probe"; mkdir -p "$probe"
  cat > "$probe/amx.c" <<'C'
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
typedef struct { unsigned char palette, start, reserved[14]; unsigned short colsb[16]; unsigned char rows[16]; } cfg_t;
int main(void) {
  if (syscall(SYS_arch_prctl, 0x1023, 18)) return 2; /* ARCH_REQ_XCOMP_PERM, XTILEDATA */
  cfg_t c = {0}; c.palette = 1; c.rows[0] = 1; c.colsb[0] = 4;
  _tile_loadconfig(&c); _tile_zero(0); _tile_release();
  return 0;
}
C
  if ! { cc -O1 -mamx-tile -o "$probe/amx" "$probe/amx.c" && "$probe/amx"; } 2>/dev/null; then
    echo "AMX is listed but its tile instructions fail here: llama.cpp is built without AMX"
    flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  fi
  rm -rf "$probe"
fi
CMAKE_ARGS="-DCMAKE_C_FLAGS='$flags' -DCMAKE_CXX_FLAGS='$flags'" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  "$venv/bin/pip" install "$src[server]" --config-settings=build-dir="$root/build"
# The programs: llama.cpp's tools on the same build. llama-cpp-python adds the multimodal library itself,
# which llama.cpp's tools would add a second time: it is left to theirs.
cmake "$root/build" -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF
cmake --build "$root/build" --target llama-quantize llama-imatrix -j "$(nproc)"
for tool in llama-quantize llama-imatrix; do
  ln -sf "$root/build/bin/$tool" "$venv/bin/$tool"
  "$venv/bin/$tool" --help >/dev/null 2>&1 || [ $? -le 1 ]  # it runs (its usage exits 1)
done
mkdir -p "$venv/share/llama.cpp"
cp -r "$src/vendor/llama.cpp/convert_hf_to_gguf.py" "$src/vendor/llama.cpp/conversion" \
      "$src/vendor/llama.cpp/gguf-py" "$venv/share/llama.cpp/"
"$venv/bin/python" -c "import llama_cpp, llama_cpp.server; print('llama-cpp-python', llama_cpp.__version__)"
