"""clip-retrieval's ``clip back`` as a benchmark peer: one FAISS index + Parquet metadata served
over HTTP on 127.0.0.1, queried with embeddings. Runs offline.

Server (in its own virtualenv, made by ``bash bench/peers/setup_clip_back.sh``)::

    bench/.venv-clip-back/bin/python bench/peers/clip_back.py --index-folder DIR --port P \
        [--name bench] [--columns url,caption,label] [--mmap] [--metadata parquet|hdf5|arrow] \
        [--omp-threads N] [--clip-model none|open_clip:ARCH] [--checkpoint FILE.pt]

It is ready when ``GET http://127.0.0.1:P/indices-list`` answers ``["bench"]``.

Folder layout clip back expects (``prepare_index_folder`` below writes it)::

    DIR/image.index          FAISS index; its result ids are metadata row numbers
    DIR/metadata/*.parquet   metadata rows, read in sorted file-name order: row i <-> id i
                             (with --metadata arrow: Arrow IPC *files* instead, nothing else)
    DIR/metadata.hdf5        written by clip back itself on first start with --metadata hdf5

Query (``POST /knn-service``, JSON)::

    {"embedding_input": [0.1, ...], "modality": "image", "num_images": 10,
     "indice_name": "bench"}
    optional: "num_result_ids" (faiss k, default num_images), "deduplicate" (default false),
    "use_mclip"/"use_safety_model"/"use_violence_detector" (false), "aesthetic_score" ("")

Answer: a JSON list, best first, ``[{"url": ..., "caption": ..., "label": ..., "id": 17,
"similarity": 0.83}, ...]`` (the columns asked for with --columns that the metadata has).
``POST /metadata {"ids": [1, 2], "indice_name": "bench"}`` answers ``[{"id": 1, "metadata":
{...}}, ...]``.

What clip back does with FAISS: ``faiss.read_index(DIR/image.index)``, or with --mmap
``faiss.read_index(path, IO_FLAG_MMAP | IO_FLAG_READ_ONLY)``; every query is one
``index.search_and_reconstruct(query[1, d], k)`` (so the index must support reconstruct: Flat,
IVF*, HNSW*, IDMap2 do; a plain IDMap does not), the found vectors are re-normalised for the
optional dedup / safety filters. It never sets nprobe / efSearch itself (except with
reorder_metadata_by_ivf_index and k >= 100000): the values saved in the index file are used,
so set them before writing it (``prepare_index_folder(..., nprobe=N)``).

The embedding is used as given (``np.array(embedding_input, float32)[None]``): no check against
the CLIP model, no normalisation; its length must be the index's d, or faiss fails and the
server answers HTTP 500. So the model is not needed for embedding queries, and by default
(``--clip-model none``) none is loaded: ``all_clip.load_clip`` is replaced by a stub (text and
image queries then fail with HTTP 500). ``--clip-model open_clip:ARCH`` loads a real open_clip
model for text/image queries: from ``--checkpoint FILE`` (a local open_clip state dict), or
with random weights when no checkpoint is given; never from a hub. Aesthetic embeddings,
M-CLIP, the safety model and the violence detector (which all download) are always off.

clip back hard-codes ``app.run(host="0.0.0.0")``; this wrapper forces ``--host`` (default
127.0.0.1) by patching ``flask.Flask.run``. The server is Flask's threaded development server
(one process), as in clip back itself.

Preparing DIR from the project's virtualenv needs only faiss and pyarrow::

    from bench.peers.clip_back import prepare_index_folder
    prepare_index_folder("work/clip", "index.faiss", table, nprobe=16)

Benchmark only; never a dependency of the project.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

DEFAULT_COLUMNS = ("url", "caption", "label")


# --------------------------------------------------------------------------- folder preparation
# (imported from the project's venv: faiss and pyarrow only, imported lazily)

def prepare_index_folder(out_dir, index, metadata, *, nprobe: int | None = None,
                         metadata_format: str = "parquet", rows_per_file: int = 1_000_000,
                         first_id: int = 0, link: bool = False) -> Path:
    """Write the folder clip back serves: ``out_dir/image.index`` + ``out_dir/metadata/``.

    index: a FAISS index file path, or a ``faiss.Index``. Its ids must be metadata row numbers.
    metadata: a ``pyarrow.Table`` (or pandas DataFrame, or Parquet file path) with one row per
        id, row-aligned with ids ``first_id .. first_id + N - 1`` (e.g. url / caption / label).
    nprobe: if given, saved into the index file (clip back searches with the saved value):
        nprobe of an IVF index, or efSearch of an HNSW one.
    metadata_format: "parquet" (for --metadata parquet or hdf5) or "arrow" (--metadata arrow).
    first_id: ids start there (the project's bench ids are row + 1: first_id=1); the metadata
        is padded with that many placeholder rows (0 / "" / False) so that row number == id.
    link: symlink an index file instead of copying it (only when nprobe is None).
    """
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    for old in (out / "metadata").iterdir():
        old.unlink()
    for stale in ("image.index", "metadata.hdf5", "metadata_reordered.hdf5"):
        if (out / stale).exists() or (out / stale).is_symlink():
            (out / stale).unlink()

    if isinstance(index, (str, os.PathLike)):
        if nprobe is None:
            ntotal = faiss.read_index(str(index), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY).ntotal
            if link:
                os.symlink(os.path.abspath(index), out / "image.index")
            else:
                shutil.copyfile(index, out / "image.index")
            index = None
        else:
            index = faiss.read_index(str(index))
    if index is not None:
        ntotal = index.ntotal
        if nprobe is not None:
            params = []
            if faiss.try_extract_index_ivf(index) is not None:
                params.append(f"nprobe={nprobe}")
            if "HNSW" in type(faiss.downcast_index(index)).__name__:
                params.append(f"efSearch={nprobe}")
            if params:
                faiss.ParameterSpace().set_index_parameters(index, ",".join(params))
        faiss.write_index(index, str(out / "image.index"))

    if isinstance(metadata, (str, os.PathLike)):
        table = pq.read_table(metadata)
    elif isinstance(metadata, pa.Table):
        table = metadata
    else:  # pandas DataFrame
        table = pa.Table.from_pandas(metadata, preserve_index=False)
    table = _portable(table)
    if first_id:
        pad = pa.table({c: _filler(first_id, table.schema.field(c).type)
                        for c in table.column_names})
        table = pa.concat_tables([pad, table])
    if table.num_rows != first_id + ntotal:
        raise ValueError(f"metadata has {table.num_rows - first_id} rows, the index {ntotal} vectors")

    for number, start in enumerate(range(0, max(table.num_rows, 1), rows_per_file)):
        part = table.slice(start, rows_per_file)
        if metadata_format == "parquet":
            pq.write_table(part, out / "metadata" / f"{number:05d}.parquet")
        elif metadata_format == "arrow":
            with pa.OSFile(str(out / "metadata" / f"{number:05d}.arrow"), "wb") as sink:
                with pa.ipc.new_file(sink, part.schema) as writer:
                    writer.write_table(part)
        else:
            raise ValueError(f"metadata_format: parquet or arrow, not {metadata_format!r}")
    return out


def _filler(n: int, kind):
    """n placeholder values: 0 / "" / False where the type has one (keeps ints ints in pandas)."""
    import pyarrow as pa

    for test, value in ((pa.types.is_integer, 0), (pa.types.is_floating, 0.0),
                        (pa.types.is_string, ""), (pa.types.is_large_string, ""),
                        (pa.types.is_boolean, False)):
        if test(kind):
            return pa.array([value] * n, kind)
    return pa.nulls(n, kind)


def _portable(table):
    """Types that the venv's older pyarrow (< 16) reads: string_view -> string."""
    import pyarrow as pa

    fields = []
    for field in table.schema:
        kind = field.type
        if str(kind) == "string_view":
            kind = pa.string()
        elif str(kind) == "binary_view":
            kind = pa.binary()
        fields.append(pa.field(field.name, kind))
    schema = pa.schema(fields)
    return table if schema.equals(table.schema) else table.cast(schema)


# --------------------------------------------------------------------------- the server
# (run with bench/.venv-clip-back/bin/python)

def _install_offline_patches(clip_model: str, checkpoint: str | None, host: str) -> str:
    """Patch clip back for offline use and a loopback bind; return the clip_model it gets."""
    bind = host
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")

    import flask

    run = flask.Flask.run

    def run_on_host(self, host=None, port=None, debug=None, **kwargs):  # noqa: ARG001
        kwargs.setdefault("threaded", True)
        print(f"clip back listening on http://{bind}:{port}", flush=True)
        return run(self, host=bind, port=port, debug=False, **kwargs)

    flask.Flask.run = run_on_host

    if clip_model == "none":
        # clip back calls `from all_clip import load_clip` inside load_clip_index: a stub module
        # keeps torch models (and the clip / open_clip imports) out entirely.
        import types

        stub = types.ModuleType("all_clip")
        stub.load_clip = lambda *args, **kwargs: (None, None, None)
        sys.modules["all_clip"] = stub
        return "ViT-B/32"  # only a name: nothing is loaded for it with every extra off

    if not clip_model.startswith("open_clip:"):
        raise SystemExit("--clip-model: none or open_clip:ARCH (e.g. open_clip:ViT-B-32)")
    arch = clip_model[len("open_clip:"):]
    if checkpoint:
        # all_clip splits "open_clip:ARCH/<path>" at the first "/" into the architecture and
        # open_clip's `pretrained`, which loads a local file without any network.
        return f"open_clip:{arch}/{os.path.abspath(checkpoint)}"

    import open_clip

    create = open_clip.create_model_and_transforms

    def random_weights(model_name, pretrained=None, *args, **kwargs):
        return create(model_name, None, *args, **kwargs)

    open_clip.create_model_and_transforms = random_weights
    return f"open_clip:{arch}/random"


def serve(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index-folder", required=True,
                        help="DIR with image.index and metadata/ (see the module docstring)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="bench", help="indice_name of this index")
    parser.add_argument("--extra-index", action="append", default=[], metavar="NAME=DIR",
                        help="serve more folders in the same server")
    parser.add_argument("--columns", default=",".join(DEFAULT_COLUMNS),
                        help="metadata columns returned (those the Parquet files have)")
    parser.add_argument("--metadata", choices=("parquet", "hdf5", "arrow"), default="parquet",
                        help="clip back's metadata provider (hdf5 converts once on first start)")
    parser.add_argument("--mmap", action="store_true",
                        help="enable_faiss_memory_mapping: IO_FLAG_MMAP | IO_FLAG_READ_ONLY")
    parser.add_argument("--omp-threads", type=int, default=0,
                        help="faiss.omp_set_num_threads (0: faiss's default)")
    parser.add_argument("--clip-model", default="none",
                        help="none (embedding queries only) or open_clip:ARCH")
    parser.add_argument("--checkpoint", help="local open_clip checkpoint for --clip-model")
    args = parser.parse_args(argv)

    indices = {args.name: os.path.abspath(args.index_folder)}
    for item in args.extra_index:
        name, _, folder = item.partition("=")
        indices[name] = os.path.abspath(folder)
    for name, folder in indices.items():
        if not os.path.exists(os.path.join(folder, "image.index")):
            raise SystemExit(f"{name}: no image.index in {folder}")
        if not os.path.isdir(os.path.join(folder, "metadata")):
            raise SystemExit(f"{name}: no metadata/ in {folder}")

    clip_model = _install_offline_patches(args.clip_model, args.checkpoint, args.host)

    import faiss

    if args.omp_threads:
        faiss.omp_set_num_threads(args.omp_threads)

    from clip_retrieval.clip_back import clip_back

    with tempfile.TemporaryDirectory(prefix="clip-back-") as work:
        paths = os.path.join(work, "indices_paths.json")
        with open(paths, "w", encoding="utf-8") as f:
            json.dump(indices, f)
        clip_back(
            indices_paths=paths,
            port=args.port,
            enable_hdf5=args.metadata == "hdf5",
            use_arrow=args.metadata == "arrow",
            enable_faiss_memory_mapping=args.mmap,
            columns_to_return=[c for c in args.columns.split(",") if c],
            reorder_metadata_by_ivf_index=False,
            enable_mclip_option=False,
            clip_model=clip_model,
            use_jit=False,
            provide_safety_model=False,
            provide_violence_detector=False,
            provide_aesthetic_embeddings=False,
        )


if __name__ == "__main__":
    serve()
