import base64

import numpy as np
import orjson

from embeddings.encoding import vector_encode, vectors_shape
from embedplatform.renderers import JSONRenderer


def test_dimensions_cut_and_renormalize():
    v = np.array([[3.0, 4.0, 12.0]], dtype=np.float32)
    out = vectors_shape(v, dimensions=2, normalize=False)
    assert out.shape == (1, 2)
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)


def test_normalize_false_keeps_the_vector():
    v = np.array([[3.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(vectors_shape(v, dimensions=None, normalize=False), v)
    np.testing.assert_allclose(vectors_shape(v, dimensions=None, normalize=True)[0], [0.6, 0.8], rtol=1e-6)


def test_a_zero_vector_does_not_become_nan():
    out = vectors_shape(np.zeros((1, 4), dtype=np.float32), dimensions=None, normalize=True)
    assert not np.isnan(out).any()


def test_base64_is_little_endian_float32_like_openai():
    v = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    decoded = np.frombuffer(base64.b64decode(vector_encode(v, "base64")), dtype="<f4")
    np.testing.assert_array_equal(decoded, v)
    assert orjson.loads(JSONRenderer().render(vector_encode(v, "float"))) == [0.5, -1.25, 3.0]  # as answers render it
