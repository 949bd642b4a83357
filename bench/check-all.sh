#!/bin/bash
# Every kernel under the JIT with --check at moderate sizes, on 1 and 2 threads.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q -p kc-cli
run() { local f=$1 d=$2 k=$3; for t in 1 2; do out=$(./target/release/kc run kernels/$f.ker --dims $d ${k:+--kernel $k} --random 1 --check --threads $t 2>&1); s=$?; echo "$f${k:+/$k} $d threads=$t exit=$s $(echo "$out" | grep -c ': ok') ok $(echo "$out" | grep -c FAILED) failed"; done; }
run adamw N=100003
run attention B=1,H=4,G=2,S=200,T=300,D=64
run attention_full B=1,H=4,G=2,S=300,T=200,D=64
run attention_bwd B=1,H=4,G=2,S=130,T=131,D=64
run cross_entropy N=33,V=5003
run layernorm T=65,D=4099
run matmul M=300,N=257,K=513
run moe_combine T=67,K=3,M=130
run moe_experts R=200,M=64,F=48,E=4
run moe_permute T=67,K=3,M=130,E=8
run moe_route T=67,M=130,E=64
run muon_orthogonalize M=67,N=131
run rmsnorm T=65,D=4099
run rmsnorm_bwd T=65,D=4099
run softmax N=65,D=4099
run swiglu T=64,F=1000 swiglu
run swiglu T=64,F=1000 swiglu_bwd
