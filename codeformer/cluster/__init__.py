"""Whole archives on a Ray cluster: folders of pictures (paths or fsspec URLs) and long videos cut into segments.

Example, on a machine that belongs to a Ray cluster::

    from codeformer.cluster import PipelineRecipe, list_pictures, ray_session, restore_pictures_on_ray

    recipe = PipelineRecipe("codeformer", load={"weights_dir": "/shared/weights"}, options={"fidelity_weight": 0.7})
    with ray_session("auto"):
        pictures, _ = list_pictures("s3://archive/scans")
        report = restore_pictures_on_ray(recipe, pictures, "s3://archive/restored")

Modules: :mod:`~codeformer.cluster.session` (Ray, imported lazily; the pool of workers),
:mod:`~codeformer.cluster.recipe` (what a worker builds its pipeline from),
:mod:`~codeformer.cluster.storage` (local folders and fsspec URLs, atomic writes),
:mod:`~codeformer.cluster.pictures`, :mod:`~codeformer.cluster.video` (the two kinds of job) and
:mod:`~codeformer.cluster.ledger` (``ray_report.jsonl``). Importing this package does not import Ray.
"""

from codeformer.cluster.ledger import REPORT_NAME
from codeformer.cluster.pictures import list_pictures, restore_pictures_on_ray
from codeformer.cluster.recipe import PipelineRecipe, PipelineSource
from codeformer.cluster.session import RAY_INSTALL, Workers, import_ray, plan_workers, ray_session
from codeformer.cluster.storage import Folder, is_url
from codeformer.cluster.video import restore_video_on_ray

__all__ = [
    "RAY_INSTALL",
    "REPORT_NAME",
    "Folder",
    "PipelineRecipe",
    "PipelineSource",
    "Workers",
    "import_ray",
    "is_url",
    "list_pictures",
    "plan_workers",
    "ray_session",
    "restore_pictures_on_ray",
    "restore_video_on_ray",
]

