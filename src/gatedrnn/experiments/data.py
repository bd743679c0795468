"""Data loaders for the experiments: MNIST / Fashion-MNIST (IDX), IMDB (aclImdb), rt-polarity.

Where data is looked for (see :func:`resolve_data_dir`): the ``data_dir`` argument (the CLI's
``--data-dir``), else ``$GATEDRNN_DATA``, else ``platformdirs.user_cache_dir("gatedrnn")``. Each
data set lives in its own sub-folder::

    <data_dir>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    <data_dir>/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    <data_dir>/imdb/aclImdb/{train,test}/{pos,neg}/*.txt      (an extracted folder), or
    <data_dir>/imdb/aclImdb_train_test.tar.gz | aclImdb_v1.tar.gz   (read in place, never extracted)
    <data_dir>/rt-polarity/rt-polarity.{pos,neg}               (latin-1, one sentence a line)

Known files are checked against :data:`CHECKSUMS` before a single value is returned, by one rule
(``_checksums.verify``) on every load and every download; a file that fails (checksum, IDX header,
sizes, damaged gzip or tar) raises :class:`CorruptData` and nothing is half-read. A missing data
set raises :class:`DatasetMissing`, whose message lists every path looked at and how to get the
files. ``download=True`` fetches the standard files (mirrors in :data:`URLS`), streaming to a
temporary file that is checked before ``os.replace`` gives it its name.

This module gathers the public names; each concern lives in a private module: ``_datadir`` (the
data folder, the errors), ``_idx`` (IDX files), ``_archives`` (tar members read safely),
``_checksums`` (the known files, the rule, downloads through ``_download``), ``_images``,
``_imdb`` and ``_rt_polarity`` (one loader each) and ``_text`` (tokeniser, vocabulary). Heavy or
optional modules (numpy, tarfile, urllib, tqdm, platformdirs) are imported inside the functions
that need them, so importing this module costs nothing.
"""

from __future__ import annotations

from ._checksums import CHECKSUMS, URLS, Checksum
from ._datadir import ENV_VAR, SPLITS, CorruptData, DataError, DatasetMissing, DownloadFailed, resolve_data_dir
from ._idx import read_idx
from ._images import IMAGE_SETS, load_image_set
from ._imdb import IMDB_ARCHIVES, IMDB_DOWNLOAD, load_imdb
from ._rt_polarity import RT_ARCHIVE, RT_FILES, load_rt_polarity
from ._text import Vocab, tokenize

__all__ = [
    "CHECKSUMS",
    "ENV_VAR",
    "IMAGE_SETS",
    "IMDB_ARCHIVES",
    "IMDB_DOWNLOAD",
    "RT_ARCHIVE",
    "RT_FILES",
    "SPLITS",
    "URLS",
    "Checksum",
    "CorruptData",
    "DataError",
    "DatasetMissing",
    "DownloadFailed",
    "Vocab",
    "load_image_set",
    "load_imdb",
    "load_rt_polarity",
    "read_idx",
    "resolve_data_dir",
    "tokenize",
]
