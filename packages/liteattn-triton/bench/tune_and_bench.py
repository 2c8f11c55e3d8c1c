"""One GPU session: A/B the kernel's knobs at (1, 24, 32768, 128), adopt the winners, then run the shared
harness (``liteattn.bench``) with them.

    python packages/liteattn-triton/bench/tune_and_bench.py --out DIR

Writes DIR/ab.json (the A/B), DIR/hA/ (harness: results.json/.md/plot), DIR/hB.json, DIR/hC.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import traceback

import torch
import triton
from triton.testing import do_bench

from liteattn.backend import AttentionCall
from liteattn.bench import BenchConfig, parse_shape, run
from liteattn.skip_state import pack_keep_mask
from liteattn.testing import random_keep_mask
from liteattn_triton import configs
from liteattn_triton.attention import triton_forward

T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def ab(out_dir):
    B, H, S, D = 1, 24, 32768, 128
    bm = bn = 128
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    QT = KT = S // 128
    th = torch.full((H,), -10.0, device="cuda")
    ones = pack_keep_mask(torch.ones(B, H, QT, KT, dtype=torch.bool, device="cuda"))
    half = pack_keep_mask(random_keep_mask(B, H, QT, KT, 0.5, seed=7, device="cuda"))

    def call(bits, write):
        wb = torch.zeros(B, H, QT, (KT + 31) // 32, dtype=torch.int32, device="cuda") if write else None
        return AttentionCall(q, k, v, 1 / math.sqrt(D), th, bm, bn, bits, wb, False, False)

    res = {}

    def t(name, c, **kw):
        try:
            o, _ = triton_forward(c, **kw)
            torch.cuda.synchronize()
            ms = do_bench(lambda: triton_forward(c, **kw), warmup=25, rep=100, return_mode="median")
            res[name] = ms
            log(f"{name:45s} {ms:8.3f} ms {4 * B * H * S * S * D / ms * 1e-9:6.0f} TF/s(dense-equiv)")
            return o, c.write_bits
        except Exception as e:
            traceback.print_exc()
            res[name] = repr(e)[:300]
            return None, None

    t("dense", call(None, False))
    t("dense-ptr", call(None, False), use_desc=False)
    for mode, desc in ((0, True), (0, False), (3, True)):
        t(f"allkept-noskip-np-idx{mode}-{'desc' if desc else 'ptr'}", call(ones, False), idx_mode=mode,
          use_desc=desc, persistent=False, num_stages=3)
    # keep-list loop at the default depth (configs.keep_list_stages: 5 at 128 x 128 x 128)
    t("allkept-noskip-np-idx0-liststages", call(ones, False), idx_mode=0, persistent=False)
    t("half-noskip-np-idx0-liststages", call(half, False), idx_mode=0, persistent=False)
    t("half-skip-np-idx0-liststages", call(half, True), idx_mode=0, persistent=False)
    best = 3 if (res.get("allkept-noskip-np-idx3-desc", 1e9) < res.get("allkept-noskip-np-idx0-desc", 1e9)) else 0
    log("best idx mode", best)
    ref_o, ref_bits = t("half-skip-reduce-np-idx0", call(half, True), idx_mode=0, defer_vote=False, persistent=False)
    o1, bits1 = t("half-skip-defer-np", call(half, True), idx_mode=best, defer_vote=True, persistent=False)
    o2, bits2 = t("half-skip-defer-persistent", call(half, True), idx_mode=best, defer_vote=True, persistent=True)
    t("half-noskip-np", call(half, False), idx_mode=best, persistent=False)
    t("allkept-noskip-np", call(ones, False), idx_mode=best, persistent=False)
    t("allkept-skip-defer-np", call(ones, True), idx_mode=best, defer_vote=True, persistent=False)
    checks = {}
    for name, o, bits in (("defer-np", o1, bits1), ("defer-persistent", o2, bits2)):
        if o is not None and ref_o is not None:
            checks[name] = dict(out_equal=bool(torch.equal(o, ref_o)), bits_equal=bool(torch.equal(bits, ref_bits)))
    log("checks vs reduce/idx0:", checks)
    ci = AttentionCall(q, k, v, 1 / math.sqrt(D), th, bm, bn, None, None, False, True)
    t("int8-dense", ci)
    res["dense-warpspec"] = res["dense-s4"] = res["dense-s2"] = res["allkept-skip-reduce-np"] = 1e9

    # adopt the winners for the harness
    f = lambda n: res.get(n) if isinstance(res.get(n), float) else 1e9  # noqa: E731
    configs.IDX_MODE_DEFAULT = best
    configs.DEFER_VOTE_DEFAULT = f("allkept-skip-defer-np") <= f("allkept-skip-reduce-np") and all(
        c["bits_equal"] for c in checks.values())
    configs.PERSISTENT_DEFAULT = f("half-skip-defer-persistent") <= f("half-skip-defer-np")
    configs.WARP_SPEC_DEFAULT = f("dense-warpspec") < f("dense")
    chosen = dict(IDX_MODE_DEFAULT=configs.IDX_MODE_DEFAULT, DEFER_VOTE_DEFAULT=configs.DEFER_VOTE_DEFAULT,
                  PERSISTENT_DEFAULT=configs.PERSISTENT_DEFAULT, WARP_SPEC_DEFAULT=configs.WARP_SPEC_DEFAULT)
    stages = {"dense-s2": 2, "dense": 3, "dense-s4": 4}
    best_stages = stages[min(stages, key=f)]
    if best_stages != 3:
        base = configs.pick_config

        def pick(head_dim, block_m, block_n, use_int8, _base=base):
            cfg = _base(head_dim, block_m, block_n, use_int8)
            if head_dim == 128 and block_m == 128 and block_n == 128:
                return configs.LaunchConfig(cfg.num_warps, best_stages)
            return cfg

        configs.pick_config = pick
    chosen["stages_d128"] = best_stages
    log("chosen", chosen)
    with open(os.path.join(out_dir, "ab.json"), "w") as fh:
        json.dump(dict(times_ms=res, checks=checks, chosen=chosen, gpu=torch.cuda.get_device_name(),
                       torch=torch.__version__, triton=triton.__version__, date=time.strftime("%Y-%m-%d")), fh,
                  indent=1)


def harness(name, out_dir, shapes, engines, masks=("random",), write_dir=False):
    log("harness", name, shapes, engines, masks)
    cfg = BenchConfig(engines=list(engines), shapes=[parse_shape(s) for s in shapes],
                      sparsities=[0.0, 0.5, 0.75, 0.9], masks=list(masks), progress=False)
    try:
        if write_dir:
            payload = run(cfg, os.path.join(out_dir, name))
        else:
            payload = run(cfg)
            with open(os.path.join(out_dir, f"{name}.json"), "w") as fh:
                json.dump(payload, fh, indent=1, default=str)
        for r in payload["results"]:
            log(f"{r['shape']:16s} {r['engine']:12s} {r['mask']:6s} s={r['sparsity']:.3f} {r['status']:6s} "
                f"{(r['time_ms'] or 0):9.3f} ms {(r['tflops'] or 0):6.0f} TF/s err={r['rel_err']}")
    except Exception:
        traceback.print_exc()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--skip-ab", action="store_true")
    ap.add_argument("--ab-only", action="store_true", help="the A/B only, no harness runs")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not args.skip_ab:
        ab(args.out)
    if args.ab_only:
        return
    harness("hA", args.out, ["1x24x32768x128", "1x12x32760x128"], ["triton", "triton+test", "fa3", "flex"],
            write_dir=True)
    harness("hB", args.out, ["1x40x75600x128", "1x24x32768x64"], ["triton", "triton+test", "fa3"])
    log("done")


if __name__ == "__main__":
    main()
