"""Jobs: many inputs through one pipeline, written in the reference's layout, in this process or on Ray.

Every front end (the command line, scripts) describes its work as a :class:`Job` and runs it with
:func:`run_job`; the jobs layer owns collecting the inputs, the output layout and naming
(:mod:`~codeformer.jobs.layout`), skipping what is done, the per-input reports, and where the job
runs (:mod:`~codeformer.jobs.local`, or :mod:`~codeformer.jobs.ray` on a cluster). Example::

    from codeformer import LoadOptions, RestoreOptions
    from codeformer.jobs import Job, OutputOptions, run_job

    report = run_job(Job("photos/", LoadOptions(detector="dlib"), RestoreOptions(fidelity_weight=0.7),
                         output=OutputOptions(folder="restored", skip_existing=True)))
    report.exit_code   # 1 if any input failed
"""

from codeformer.jobs.crop import CropJob, crop_faces
from codeformer.jobs.download import FileOutcome, fetch_weights
from codeformer.jobs.inputs import collect_pictures, list_pictures
from codeformer.jobs.job import Job, OutputOptions, RayOptions
from codeformer.jobs.loop import BatchReport
from codeformer.jobs.run import run_job

__all__ = [
    "BatchReport",
    "CropJob",
    "FileOutcome",
    "Job",
    "OutputOptions",
    "RayOptions",
    "collect_pictures",
    "crop_faces",
    "fetch_weights",
    "list_pictures",
    "run_job",
]
