#!/usr/bin/env python3
"""PyTorch's matmuls on the products `radar bench gemm` measured, on the same GPU.

Reads the JSON record `radar bench gemm` printed (--shapes FILE) and times, for each product,
what PyTorch AMP runs for it: torch.matmul (torch.addmm where the product carries a bias) of
bf16 tensors PyTorch allocated itself (so aligned as its caching allocator aligns them), with a
bf16 result as autocast gives, timed with CUDA events. One JSON object on stdout: per product
the milliseconds and TFLOP/s, and the step's total weighted by how often the step makes each.

    python3 bench/pytorch_gemm.py --shapes gemm.json [--repeats 20]

cuBLAS's column-major C (m x n) = op(A) op(B) is row-major C^T (n x m) = op(B)^T op(A)^T: the
operands are built as the row-major tensors whose (transposed) views those are, so PyTorch makes
the same cuBLAS call up to its own choice of operand order.
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", required=True, help="the JSON record radar bench gemm printed")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per product (their mean is reported)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (to check the shapes without a GPU; wall-clock times)")
    args = ap.parse_args()
    import time
    import torch

    try:
        record = json.load(open(args.shapes))
    except (OSError, ValueError) as e:
        sys.exit(f"pytorch_gemm.py: --shapes {args.shapes}: {e}")
    if not isinstance(record, dict) or not isinstance(record.get("shapes"), list):
        sys.exit(f"pytorch_gemm.py: --shapes {args.shapes}: expected radar bench gemm's record (a \"shapes\" list)")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("pytorch_gemm.py: no CUDA device for PyTorch")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = record.get("precision") == "tf32"
    generator = torch.Generator(device=device).manual_seed(0)

    def operand(rows, cols, dtype):
        return torch.randn(rows, cols, device=device, dtype=torch.float32, generator=generator).to(dtype)

    def timed(fn):
        for _ in range(3):
            fn()
        if not cuda:
            started = time.perf_counter()
            for _ in range(args.repeats):
                fn()
            return (time.perf_counter() - started) * 1000 / args.repeats
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(args.repeats):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / args.repeats

    results, total = [], 0.0
    for s in record["shapes"]:
        c = s["call"]
        m, n, k, batch = c["m"], c["n"], c["k"], c["batch"]
        dtype = torch.bfloat16 if c["operands"] == "bf16" else torch.float32
        # op(A)^T (k x m) and op(B)^T (n x k), as views of row-major tensors laid out as cuBLAS reads them.
        def op_a():
            return operand(m, k, dtype).t() if c["trans_a"] else operand(k, m, dtype)
        def op_b():
            return operand(k, n, dtype).t() if c["trans_b"] else operand(n, k, dtype)
        if batch > 1:
            a = torch.stack([op_a() for _ in range(batch)])
            b = torch.stack([op_b() for _ in range(batch)])
            fn = lambda: torch.bmm(b, a)
        elif c["bias"]:
            a, b = op_a(), op_b()
            bias = operand(1, m, dtype).reshape(m)
            fn = lambda: torch.addmm(bias, b, a)
        else:
            a, b = op_a(), op_b()
            fn = lambda: torch.mm(b, a)
        out = fn()
        expected = (batch, n, m) if batch > 1 else (n, m)
        if tuple(out.shape) != expected:  # C^T, row-major
            sys.exit(f"pytorch_gemm.py: {s['shape']}: a result of shape {tuple(out.shape)}, expected {expected}")
        ms = timed(fn)
        flops = 2.0 * m * n * k * batch
        total += ms * s["calls_per_step"]
        results.append({"shape": s["shape"], "ms": ms, "tflops": flops / ms / 1e9, "calls_per_step": s["calls_per_step"],
                        "output": "bf16" if dtype == torch.bfloat16 else "fp32", "bias": bool(c["bias"]) and batch == 1})
        del a, b
    print(json.dumps({"bench": "pytorch_gemm", "torch": torch.__version__, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                      "repeats": args.repeats, "gemm_ms_per_step": total, "shapes": results}))


if __name__ == "__main__":
    main()
