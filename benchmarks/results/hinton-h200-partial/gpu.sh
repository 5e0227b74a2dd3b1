#!/bin/bash
# Device check: the full recipe (seed 0) and a few variants in parallel on one GPU.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 KDISTILL_OFFLINE=1 KDISTILL_DATA=/tmp/kd
mkdir -p /tmp/kd && cp -r .kd-data/mnist /tmp/kd/ && gunzip /tmp/kd/mnist/*.gz
nvidia-smi --query-gpu=name --format=csv,noheader; python3 -c "import torch; print(torch.__version__)"
LIMIT=${1:-480}
timeout $LIMIT python3 -m kdistill reproduce hinton-mnist --device cuda --out $OUT/full 2>&1 | sed -u 's/^/[full] /' >> $OUT/log.txt &
timeout $LIMIT python3 .kd-data/variants.py students $OUT/full/seed-0/teacher.safetensors 2>&1 | sed -u 's/^/[var] /' >> $OUT/log.txt &
timeout $LIMIT python3 .kd-data/variants.py teacher 2>&1 | sed -u 's/^/[sgd] /' >> $OUT/log.txt &
wait
rm -f $OUT/full/table.csv
cat $OUT/log.txt
