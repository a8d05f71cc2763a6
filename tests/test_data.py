"""`vmem data fashion-mnist`: Debian's copy, or a checksummed download (served on loopback)."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import tarfile
import threading
from functools import partial

import numpy as np
import pytest

from pipelines.data import fashion_mnist
from pipelines.data.__main__ import main


def test_writes_labelled_shards_from_debian_files(tmp_path):
    assert main(["fashion-mnist", "--out", str(tmp_path), "--split", "test", "--per-class", "3",
                 "--shard-size", "20"]) == 0
    shards = sorted(tmp_path.glob("fashion-mnist-test-*.tar"))
    assert [s.name for s in shards] == ["fashion-mnist-test-000000.tar", "fashion-mnist-test-000001.tar"]
    names = [m for s in shards for m in tarfile.open(s).getnames()]
    assert len(names) == 60 and sum(n.endswith(".png") for n in names) == 30
    labels = {tarfile.open(s).extractfile(n).read().decode()
              for s in shards for n in tarfile.open(s).getnames() if n.endswith(".cls")}
    assert labels == set(fashion_mnist.CLASSES)


def test_class_selection(tmp_path):
    assert main(["fashion-mnist", "--out", str(tmp_path), "--split", "test", "--per-class", "2",
                 "--classes", "Bag,Trouser,Coat", "--exclude-classes", "Coat"]) == 0
    shard = next(tmp_path.glob("fashion-mnist-test-*.tar"))
    labels = sorted(tarfile.open(shard).extractfile(n).read().decode()
                    for n in tarfile.open(shard).getnames() if n.endswith(".cls"))
    assert labels == ["Bag", "Bag", "Trouser", "Trouser"]
    with pytest.raises(ValueError, match="unknown Fashion-MNIST classes"):
        main(["fashion-mnist", "--out", str(tmp_path), "--classes", "Spaceship"])


def test_idx_reader_matches_known_shapes():
    images, labels = fashion_mnist.load_split("test")
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert np.bincount(labels).tolist() == [1000] * 10  # the test split is balanced


@pytest.fixture
def file_server(tmp_path):
    """Real HTTP on 127.0.0.1 serving a folder: the download path without leaving the machine."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_is_checked_against_checksums(file_server, tmp_path):
    served, url = file_server
    labels = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3]))
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(labels)
    good = {"t10k-labels-idx1-ubyte.gz": hashlib.md5(labels).hexdigest()}
    path = fashion_mnist.fetch("t10k-labels-idx1-ubyte.gz", url, tmp_path / "no-debian", good,
                               tmp_path / "cache")
    assert fashion_mnist.read_idx(path).tolist() == [1, 2, 3]

    bad = {"t10k-labels-idx1-ubyte.gz": "0" * 32}
    with pytest.raises(ValueError, match="checksum mismatch"):
        fashion_mnist.fetch("t10k-labels-idx1-ubyte.gz", url, tmp_path / "no-debian", bad,
                            tmp_path / "cache2")
    assert not list((tmp_path / "cache2").iterdir())  # nothing unverified left behind
