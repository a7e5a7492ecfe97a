"""A smaller run of benchmarks/int4_perplexity.py: a byte-level GPT trained briefly on the Python
standard library's sources; GPTQ and AWQ must each beat round-to-nearest on held-out perplexity,
and int4 GPTQ stay close to fp32."""
import importlib.util
import os

import torch

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "int4_perplexity.py")


def _load():
    spec = importlib.util.spec_from_file_location("int4_perplexity", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_int4_perplexity_ordering():
    mod = _load()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        res, _ = mod.run(mod.QUICK, log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)
    fp, rtn = res["fp32"], res["int4 rtn g64"]
    gptq, awq = res["int4 gptq g64"], res["int4 awq g64"]
    assert gptq < rtn and awq < rtn, res
    assert gptq < fp * 1.05, res
    assert res["int8 dynamic"] < fp * 1.02, res
