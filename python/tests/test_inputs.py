"""Bad inputs raise typed exceptions with the engine's messages; never a panic, never a
silently wrong number."""

import numpy as np
import pytest

import longctx


def small(rng):
    return rng.normal(1, 2, 9, 8), rng.normal(1, 2, 11, 8), rng.normal(1, 2, 11, 8)


def test_wrong_dtype_is_a_dtype_error(dev, rng):
    q, k, v = small(rng)
    with pytest.raises(longctx.DTypeError, match="int64"):
        dev.attention(q.astype(np.int64), k, v)
    with pytest.raises(TypeError):  # DTypeError is a TypeError
        dev.attention(q, k.astype(bool), v)


def test_wrong_rank_and_shapes_are_shape_errors(dev, rng):
    q, k, v = small(rng)
    with pytest.raises(longctx.ShapeError, match=r"\[B, H, N, D\]"):
        dev.attention(q[0, 0], k, v)
    with pytest.raises(longctx.ShapeError):
        dev.attention(q, k, v[:, :, :5])
    with pytest.raises(longctx.ShapeError, match="multiple"):
        dev.attention(np.zeros((1, 3, 4, 8), np.float32), k, v)
    with pytest.raises(ValueError):  # ShapeError is a ValueError
        dev.matmul(np.ones((3, 4), np.float32), np.ones((5, 6), np.float32))


def test_non_finite_inputs_name_the_tensor_and_index(dev, rng):
    q, k, v = small(rng)
    k[0, 1, 3, 2] = np.nan
    with pytest.raises(longctx.NonFiniteError, match=r"K holds a non-finite value \(NaN\) at flat index 114"):
        dev.attention(q, k, v)
    # float64 beyond float32's range becomes inf, refused
    with pytest.raises(longctx.NonFiniteError):
        dev.attention(q.astype(np.float64) * 1e300, k, v)


def test_a_mod_with_a_syntax_error_names_its_line(dev, rng):
    q, k, v = small(rng)
    src = "fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {\n    return score +;\n}\n"
    with pytest.raises(longctx.ShaderError) as err:
        dev.attention(q, k, v, score_mod=src)
    assert err.value.file == "score_mod" and err.value.line == 2, str(err.value)
    assert "score_mod:2:" in str(err.value)


def test_a_mod_that_loops_forever_is_stopped(dev, rng):
    q, k, v = small(rng)
    src = """fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool {
    var i = 0u;
    loop { i += 1u; if i == 0u { break; } }
    return true;
}"""
    with pytest.raises(longctx.ShaderError):
        dev.attention(q, k, v, mask_mod=src)


def test_bad_options_are_option_errors(dev, rng):
    q, k, v = small(rng)
    with pytest.raises(longctx.OptionError, match="kernel `fast`"):
        dev.attention(q, k, v, kernel="fast")
    with pytest.raises(longctx.OptionError):
        dev.attention(q, k, v, mods=["softcap=-1"])
    with pytest.raises(longctx.OptionError):
        dev.matmul(np.ones((4, 4), np.float32), np.ones((4, 4), np.float32), activation="relu")
    with pytest.raises(longctx.OptionError):
        longctx.plan("gpt-5", 1000)
    with pytest.raises(longctx.LongctxError):
        dev.attention(q, k, v, rope=True, sinusoidal=True)


def test_a_problem_beyond_the_device_is_a_limit_error_before_allocating(dev):
    # 2^31 floats of K: past max_buffer_size on every adapter; nothing is allocated on the host
    # either (the arrays are views of one broadcast scalar, converted only as far as the check)
    limit = dev.limits["max_buffer_size"]
    m = limit // (4 * 64) + 1
    cache = None
    with pytest.raises(longctx.LimitError, match="max_buffer_size|max_storage_buffer_binding_size"):
        cache = dev.kv_cache(1, 1, 64, m)
    assert cache is None
