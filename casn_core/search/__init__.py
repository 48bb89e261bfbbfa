"""Search any folder of person crops with query images (no labels or naming convention needed).

- :mod:`casn_core.search.scan` -- recursive, sorted scan of a gallery folder; bad files reported.
- :mod:`casn_core.search.features` -- features and maps extracted once, cached outside the folder.
- :mod:`casn_core.search.index` -- :class:`SearchIndex`: feature ranking, then CASN on the top K.
- :mod:`casn_core.search.figure` -- the ranked strip picture.
- ``casn search`` is :mod:`casn_core.commands.search`.

Example::

    from casn_core.search import open_search_index

    index = open_search_index("checkpoints/casn_mobilenetv2_synth.pt", "my_crops/")
    result = index.search("me.jpg", topk=10)
    print(result.to_json()["results"][0])   # {"path": ..., "rank": 1, "feature_distance": ..., ...}
"""
from casn_core.search.features import DEFAULT_CACHE_DIR, GalleryFeatures, file_list_key, load_or_extract_gallery
from casn_core.search.index import (
    RankingChoice, SearchHit, SearchIndex, SearchResult, build_search_index, open_search_index,
)
from casn_core.search.scan import (
    SEARCH_EXTENSIONS, EmptyGalleryError, GalleryImage, GalleryNotFoundError, GalleryReport, SearchError,
    SkippedFile, check_images, scan_gallery,
)

__all__ = [
    "DEFAULT_CACHE_DIR", "SEARCH_EXTENSIONS", "EmptyGalleryError", "GalleryFeatures", "GalleryImage",
    "GalleryNotFoundError", "GalleryReport", "RankingChoice", "SearchError", "SearchHit", "SearchIndex", "SearchResult",
    "SkippedFile", "build_search_index", "check_images", "file_list_key", "load_or_extract_gallery",
    "open_search_index", "scan_gallery",
]
