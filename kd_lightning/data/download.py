"""Fetching a data set's official archive, with one clear message when it cannot be had."""
from __future__ import annotations

from kd_lightning.exceptions import DatasetDownloadError

__all__ = ["DatasetDownloadError", "download_archive"]


def download_archive(name: str, url: str, root: str, filename: str, md5: str, folder: str) -> None:
    """Downloads `url` into `root` as `filename`, checks its md5 and extracts it there (creating `folder`/)."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(url, root, filename=filename, md5=md5)
    except Exception as err:  # network, disk, checksum: one message saying what to do instead
        raise DatasetDownloadError(
            f"Downloading {name} from {url} into {root} failed ({type(err).__name__}: {err}). "
            f"Download {filename} by hand and extract it in {root} (it creates {folder}/)."
        ) from None
