import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rexomni import CoordCodec, get_codec

sizes = st.integers(1, 5000)
fractions = st.floats(0.0, 1.0, allow_nan=False)


@pytest.mark.parametrize("name", ["center", "rexomni"])
@settings(max_examples=200, deadline=None)
@given(w=sizes, h=sizes, fx=fractions, fy=fractions)
def test_round_trip_error_is_bounded(name, w, h, fx, fy):
    codec = CoordCodec(name)
    point = np.array([fx * w, fy * h])
    back = codec.decode(codec.encode(point, w, h), w, h)
    bound = np.array([w, h]) * codec.max_error
    assert np.all(np.abs(back - point) <= bound * (1 + 1e-9))


def test_round_trip_bound_is_tight_for_center():
    codec = CoordCodec("center")
    # A point at a bin's left edge is half a bin from the bin's centre: exactly W / 2000.
    back = codec.decode(codec.encode(np.array([0.0, 0.0]), 1000, 500), 1000, 500)
    assert back.tolist() == [0.5, 0.25]


def test_released_codec_matches_its_definition():
    codec = CoordCodec("rexomni")
    w, h = 640, 480
    x = np.array([0.0, 0.0, 320.0, 479.0, 640.0, 480.0])
    expected = [int(min(max(v / s, 0), 1) * 999) for v, s in zip(x, [w, h] * 3)]
    assert codec.encode(x, w, h).tolist() == expected
    assert codec.decode(np.array([999, 999]), w, h).tolist() == [640.0, 480.0]


@pytest.mark.parametrize("name", ["center", "rexomni"])
@settings(max_examples=100, deadline=None)
@given(w=sizes, xs=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=2, max_size=50))
def test_encoding_is_monotonic_and_clamped(name, w, xs):
    codec = CoordCodec(name)
    xs = np.sort(np.array(xs))
    flat = np.stack([xs, xs], axis=1)  # x and y columns, image w x w
    bins = codec.encode(flat, w, w)[:, 0]
    assert np.all(np.diff(bins) >= 0)
    assert bins.min() >= 0 and bins.max() <= 999
    assert np.all(bins[xs <= 0] == 0)
    assert np.all(bins[xs >= w] == 999)


@pytest.mark.parametrize("name", ["center", "rexomni"])
def test_decoded_coordinates_stay_in_the_image(name):
    codec = CoordCodec(name)
    out = codec.decode(np.array([[-5, 0, 999, 5000]]), 33, 77)
    assert np.all(out >= 0) and np.all(out[:, 0::2] <= 33) and np.all(out[:, 1::2] <= 77)


def test_non_square_images_use_width_for_x_and_height_for_y():
    codec = CoordCodec("center")
    box = np.array([[100.0, 100.0, 200.0, 200.0]])
    bins = codec.encode(box, 1000, 250)
    assert bins.tolist() == [[100, 400, 200, 800]]


def test_boxes_points_polygons_numpy_and_torch_agree():
    codec = CoordCodec("center")
    rng = np.random.default_rng(0)
    for shape in [(7, 4), (7, 2), (5, 2), (3, 12)]:
        coords = rng.uniform(-10, 700, size=shape)
        np_bins = codec.encode(coords, 640, 360)
        t_bins = codec.encode(torch.tensor(coords, dtype=torch.float32), 640, 360)
        assert isinstance(t_bins, torch.Tensor) and t_bins.dtype == torch.int64
        # float32 input may straddle a bin edge; allow one bin
        assert np.abs(t_bins.numpy() - np_bins).max() <= 1
        assert np.allclose(codec.decode(torch.from_numpy(np_bins), 640, 360).numpy(), codec.decode(np_bins, 640, 360))


@pytest.mark.parametrize("name", ["center", "rexomni"])
def test_scalar_decode_matches_the_vectorised_one(name):
    codec = CoordCodec(name)
    bins = [0, 1, 500, 998, 999, 1500, -3, 7]
    assert codec.decode_list(bins, 641, 479) == codec.decode(np.array(bins), 641, 479).tolist()


def test_degenerate_boxes_survive_the_round_trip():
    codec = CoordCodec("center")
    box = np.array([50.0, 60.0, 50.0, 60.0])
    back = codec.decode(codec.encode(box, 100, 100), 100, 100)
    assert back[0] == back[2] and back[1] == back[3]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown coordinate codec"):
        get_codec("linear")
    with pytest.raises(ValueError, match="image size"):
        CoordCodec().encode([1, 2], 0, 10)
    with pytest.raises(ValueError, match="interleave"):
        CoordCodec().encode(np.zeros((2, 3)), 10, 10)
