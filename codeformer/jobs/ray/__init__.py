"""The Ray backend of :mod:`codeformer.jobs`: folders of pictures (paths or fsspec URLs) and long videos in segments.

:func:`codeformer.jobs.run_job` uses it for a :class:`~codeformer.jobs.Job` with ``ray`` set; it can
also be driven directly, on a machine that belongs to a Ray cluster::

    from codeformer import LoadOptions, RestoreOptions
    from codeformer.jobs import list_pictures
    from codeformer.jobs.ray import PipelineRecipe, ray_session, restore_pictures_on_ray

    recipe = PipelineRecipe(LoadOptions(weights_dir="/shared/weights"), RestoreOptions(fidelity_weight=0.7))
    with ray_session("auto"):
        pictures, _ = list_pictures("s3://archive/scans")
        report = restore_pictures_on_ray(recipe, pictures, "s3://archive/restored")

Modules: :mod:`~codeformer.jobs.ray.session` (Ray, imported lazily; the pool of workers),
:mod:`~codeformer.jobs.ray.recipe` (what a worker builds its pipeline from),
:mod:`~codeformer.jobs.ray.pictures`, :mod:`~codeformer.jobs.ray.video` (the two kinds of job) and
:mod:`~codeformer.jobs.ray.ledger` (``ray_report.jsonl``). Importing this package does not import Ray.
"""

from codeformer.jobs.ray.ledger import REPORT_NAME
from codeformer.jobs.ray.pictures import restore_pictures_on_ray
from codeformer.jobs.ray.recipe import PipelineRecipe, PipelineSource
from codeformer.jobs.ray.session import RAY_INSTALL, Workers, import_ray, plan_workers, ray_session
from codeformer.jobs.ray.video import restore_video_on_ray

__all__ = [
    "RAY_INSTALL",
    "REPORT_NAME",
    "PipelineRecipe",
    "PipelineSource",
    "Workers",
    "import_ray",
    "plan_workers",
    "ray_session",
    "restore_pictures_on_ray",
    "restore_video_on_ray",
]
