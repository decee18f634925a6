"""Streaming video decode / encode with PyAV (FFmpeg inside the wheel), audio kept.

:func:`transform_video` runs every frame of a video through a frame-processing callable and
writes an H.264 ``.mp4`` that plays like the input: same frames, frame timing (variable frame
rate included), duration and audio tracks. Nothing holds all frames and no frame touches the
disk as an image; memory is bounded by the queue sizes, not by the video's length.

Design:

- **Pass 1** (video) runs three stages that overlap through small bounded queues:
  a decoder thread (demux, decode, convert to BGR, rotate upright), the calling thread
  (batches of ``batch_frames`` frames through ``process_batch``), and an encoder thread
  (pad to even size, convert to YUV 4:2:0, H.264 encode, mux). PyAV releases the GIL in codec
  and scaling work and torch releases it in its ops, so the stages run in parallel. A failure in
  any stage (or KeyboardInterrupt in the caller) sets a shared stop flag; every blocking queue
  operation polls it, so all threads end within a fraction of a second and the first error is
  raised in the caller.
- **Pass 2** (only when the input has audio) remuxes the encoded video with the input's audio
  tracks into the final file, reading both files packet by packet in timestamp order. Audio the
  MP4 container accepts (AAC, MP3, AC-3, E-AC-3, ALAC) is copied bit for bit, anything else
  (PCM, Opus, Vorbis, FLAC, ...) is re-encoded to AAC. Two passes keep each step simple and
  memory-safe: the muxer never has to buffer audio while the (slow) video side catches up.
  The cost is one extra sequential copy of the compressed video, small next to encoding it.
- Frames keep their presentation times (input ``pts`` and time base carried through), so the
  frame count, rate, duration and any variable frame timing are kept and the audio stays in
  sync. An ``fps`` override re-times frames at a constant rate instead (audio kept as is).
- Output is written to hidden temporary files next to the destination and renamed onto it with
  :func:`os.replace` at the end; any failure removes the temporaries and leaves no file under
  the final name.
- Colours: frames are converted with the input's YUV matrix (BT.601 when it is untagged, as
  FFmpeg assumes) and the output is encoded with, and tagged as, the same matrix in limited
  range, so a player shows the colours the processing saw.
"""

from codeformer.video.probe import VIDEO_EXTENSIONS, AudioTrack, VideoInfo, is_video_path, probe_video
from codeformer.video.stages import FrameProcessor, ProcessBatch, h264_encoder
from codeformer.video.transform import VideoStats, transform_video

__all__ = [
    "VIDEO_EXTENSIONS",
    "AudioTrack",
    "FrameProcessor",
    "ProcessBatch",
    "VideoInfo",
    "VideoStats",
    "h264_encoder",
    "is_video_path",
    "probe_video",
    "transform_video",
]
