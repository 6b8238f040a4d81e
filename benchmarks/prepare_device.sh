#!/usr/bin/env bash
# Prepare what a GPU benchmark call carries (run here, in the repository root, before the device call):
#   .whl/          wheels the device image lacks (python 3.12, x86-64), pinned to the versions benchmarked
#   .devcache/bench/  the Qwen3 tokenizer, the EM data sample and judge prompts, copied from ../shared
# Both folders are git-ignored; together ~28 MB of the 64 MiB a call may carry.
set -eu
SHARED=${INTROSPECT_MECH_SHARED:-../shared}
mkdir -p .whl .devcache/bench/tokenizers
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  nnsight==0.8.1 transformer-lens==3.9.0 trl==1.16.0 peft==0.21.2 greenlet==3.5.6 pydantic==2.13.4 \
  pydantic_core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 better-abc==0.0.3 datasets==5.2.0 \
  dill==0.4.1 multiprocess==0.70.19 zstandard==0.25.0 beartype==0.23.1 typeguard==4.6.0 fancy-einsum==0.0.3 \
  websocket-client==1.9.2 platformdirs==4.14.7
cp -r "$SHARED/tokenizers/qwen3" .devcache/bench/tokenizers/
cp "$SHARED/data/em/bad_medical_advice.jsonl.gz" "$SHARED/data/em/questions/first_plot_questions.yaml" .devcache/bench/
chmod -R u+w .devcache/bench
du -sh .whl .devcache/bench
