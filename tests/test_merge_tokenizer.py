"""The tokenizer: block of a merge config: output files and rows on tiny models, and the
errors (unknown tokens, sources that lack the token, bad values). The rows against mergekit
are in tests/test_merge_mergekit.py; chat_template in tests/test_merge_templates.py."""
import json
import os

import numpy as np
import pytest
import safetensors.numpy

from fusechat.errors import ConfigError
from fusechat.merge import run
from tests.merge_models import make_family


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(str(tmp_path_factory.mktemp("tok_models")), 2, "float32",
                       target_vocab=[100, 120], seed=7)


def _cfg(family, **top):
    base, (same, big) = family
    cfg = {"merge_method": "task_arithmetic", "base_model": base, "dtype": "float32",
           "models": [{"model": p, "parameters": {"weight": 0.5}} for p in (same, big)]}
    cfg.update(top)
    return cfg


def _load(folder):
    return safetensors.numpy.load_file(os.path.join(folder, "model.safetensors"))


def test_source_base_padding_and_forced_rows(family, tmp_path):
    """source: base keeps the base's 100 tokens; padding to 64 adds 28 rows, each the mean
    of the merged rows (task arithmetic is linear, so the merge of each model's mean); a
    forced token takes its source's row whatever the merge gives; vocab_size is 128 and the
    tokenizer keeps 100 tokens."""
    base, (same, big) = family
    cfg = _cfg(family, tokenizer={"source": "base", "pad_to_multiple_of": 64,
                                  "tokens": {"w1": {"source": big, "force": True}}})
    run(cfg, tmp_path / "o", quiet=True)
    got = _load(tmp_path / "o")
    b, s, g = _load(base), _load(same), _load(big)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        w = got[name]
        assert w.shape == (128, 64)
        plain = b[name] + 0.5 * (s[name] - b[name]) + 0.5 * (g[name][:100] - b[name])
        plain[4] = g[name][4]  # w1 is id 4 in every model
        np.testing.assert_allclose(w[:100], plain, rtol=0, atol=1e-6)
        np.testing.assert_allclose(w[100:], np.broadcast_to(plain.mean(0), (28, 64)),
                                   rtol=0, atol=1e-6)
    with open(tmp_path / "o" / "config.json") as f:
        assert json.load(f)["vocab_size"] == 128
    with open(tmp_path / "o" / "tokenizer.json") as f:
        assert len(json.load(f)["model"]["vocab"]) == 100


@pytest.mark.parametrize("tokenizer, match", [
    ({"tokens": {"w999": {"source": {"kind": "zero"}}}},
     r"tokenizer.tokens\['w999'\]: token 'w999' is not in the output vocabulary"),
    ({"source": "base", "tokens": {"w105": {"source": {"kind": "zero"}}}},
     r"tokenizer.tokens\['w105'\]: token 'w105' is not in the output vocabulary \(100 tokens"),
    ({"tokens": {"w105": {"source": "SAME"}}},
     r"tokenizer.tokens\['w105'\]: model .*target0 has no token 'w105'"),
    ({"tokens": {"w5": {"source": {"kind": "model_token", "model": "SAME",
                                   "token_id": 100}}}},
     r"token_id 100 is outside the vocabulary of .*target0 \(100 tokens\)"),
    ({"tokens": {"w5": {"source": {"kind": "model_token", "model": "SAME"}}}},
     "give exactly one of token or token_id"),
    ({"tokens": {"w5": {"source": {"kind": "mean"}}}},
     r"source must be a model path, \{kind: zero\}"),
    ({"tokens": {"w5": {"source": {"kind": "zero"}, "force": "yes"}}},
     "force must be true or false"),
    ({"tokens": {"w5": {"src": "x"}}}, "unknown key 'src'; valid keys: source, force"),
    ({"pad_to_multiple_of": 0}, "pad_to_multiple_of must be a positive integer, got 0"),
    ({"source": 3}, "tokenizer.source must be base, union or a model path"),
    ({"vocab": 3}, "unknown key 'vocab'"),
])
def test_tokenizer_errors(family, tmp_path, tokenizer, match):
    same = family[1][0]
    tok = json.loads(json.dumps(tokenizer).replace('"SAME"', json.dumps(same)))
    with pytest.raises(ConfigError, match=match):
        run(_cfg(family, tokenizer=tok), tmp_path / "o", quiet=True)
    assert not (tmp_path / "o").exists()


def test_tokenizer_key_errors(family, tmp_path):
    with pytest.raises(ConfigError, match="give tokenizer_source or tokenizer, not both"):
        run(_cfg(family, tokenizer_source="union", tokenizer={"source": "base"}),
            tmp_path / "o", quiet=True)
    other = make_family(str(tmp_path / "x"), 1, "float32", seed=1)[1][0]
    with pytest.raises(ConfigError, match=r"model .*x/target0 is not one of the models of "
                                          "this merge"):
        run(_cfg(family, tokenizer={"tokens": {"w5": {"source": other}}}), tmp_path / "o",
            quiet=True)
