import numpy as np

from mixjax.data.domain import Example, examples_hash


def _examples(*rows):
    return [Example(np.array(tokens, np.int32), np.array(mask, np.int32)) for tokens, mask in rows]


def test_examples_hash_is_the_pipeline_fingerprint_layout():
    """One examples_hash for the run fingerprint and result.json's trained_examples_hash:
    per example int64 length + int32 tokens + int32 loss mask (the pipeline's layout,
    pinned: a change would make every recorded run look stale)."""
    a = _examples(([5, 6, 7], [0, 1, 1]), ([9, 10], [1, 1]))
    assert examples_hash(a) == "925faef7f8ffc598ebbc0e40dc0b27b8e5a35e8a3906f1f05fb84395ded34717"
    # The same tokens split at another example boundary: another hash (the lengths count).
    b = _examples(([5, 6], [0, 1]), ([7, 9, 10], [1, 1, 1]))
    assert examples_hash(b) == "042bb303bab03fb920087e41c242e128b5e405ae9a53e66f89349832630f95e3"
    assert examples_hash([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of nothing
    assert examples_hash(_examples(([5, 6, 7], [0, 1, 0]), ([9, 10], [1, 1]))) != examples_hash(a)  # masks count
