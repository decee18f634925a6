"""Pass 2: the encoded video remuxed with the input's audio tracks, copied or re-encoded to AAC."""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import av

from codeformer.errors import CodeFormerError
from codeformer.video.probe import Source, ffmpeg_reason, open_input

logger = logging.getLogger(__name__)

# Tags of the two packet sources in the timestamp-ordered merge (on equal times video goes first).
_VIDEO_SOURCE, _AUDIO_SOURCE = 0, 1

# Audio codecs an MP4 file carries that players handle; others are re-encoded to AAC.
MP4_COPY_AUDIO_CODECS = frozenset({"aac", "mp3", "ac3", "eac3", "alac"})
AAC_BITRATE_PER_CHANNEL = 96_000  # 192 kb/s for stereo: transparent for FFmpeg's AAC encoder
# Channel layouts FFmpeg's native AAC encoder accepts, and the one used for a channel count.
AAC_LAYOUTS = frozenset({
    "mono", "stereo", "2.1", "3.0", "4.0", "quad", "5.0", "5.0(side)", "5.1", "5.1(side)",
    "6.1", "7.1", "7.1(wide)",
})  # fmt: skip
AAC_DEFAULT_LAYOUTS = {
    1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1",
}  # fmt: skip


@dataclass
class _AudioOut:
    source: av.AudioStream
    target: av.AudioStream
    copy: bool
    shift: int  # subtracted from pts/dts, in the source stream's time base


def _aac_rate(rate: int) -> int:
    """The nearest sample rate at or above ``rate`` that the AAC encoder takes."""
    supported = sorted(av.Codec("aac", "w").audio_rates or (48_000,))
    return next((r for r in supported if r >= rate), supported[-1])


def _add_audio_output(
    out: av.container.OutputContainer, source: av.AudioStream, origin_s: float
) -> _AudioOut:
    shift = round(origin_s / source.time_base) if source.time_base else 0
    if source.codec_context.codec.canonical_name in MP4_COPY_AUDIO_CODECS:
        return _AudioOut(source, out.add_stream_from_template(source), True, shift)
    context = source.codec_context
    channels = int(context.channels or 0)
    layout = context.layout.name if context.layout is not None else ""
    if layout not in AAC_LAYOUTS:
        # Unnamed ("2 channels") or unsupported layouts: the usual layout for that many
        # channels; beyond 7.1, PyAV's resampler downmixes to stereo.
        layout = AAC_DEFAULT_LAYOUTS.get(channels, "stereo")
    target = out.add_stream("aac", rate=_aac_rate(int(context.sample_rate)), layout=layout)
    target.bit_rate = AAC_BITRATE_PER_CHANNEL * target.codec_context.channels
    if source.language:
        target.language = source.language
    return _AudioOut(source, target, False, shift)


def _packet_time(packet: av.Packet) -> Optional[float]:
    stamp = packet.dts if packet.dts is not None else packet.pts
    if stamp is None or packet.time_base is None:
        return None
    return float(stamp * packet.time_base)


def _timed_packets(
    container: av.container.InputContainer, streams: Sequence[av.stream.Stream], source: int
) -> Iterator[tuple[float, int, int, av.Packet]]:
    """Demuxed packets as (decode time in seconds, source, order in the file, packet).

    Packets without a timestamp (and end-of-stream markers) take the previous packet's time,
    so each source stays sorted for :func:`heapq.merge`; source and order break ties, so
    packets themselves are never compared.
    """
    last = -math.inf
    for order, packet in enumerate(container.demux(list(streams))):
        stamp = _packet_time(packet)
        last = last if stamp is None else stamp
        yield last, source, order, packet


def mux_audio(
    video_path: Path, source: Source, dst: Path, container_format: str, options: dict[str, str]
) -> tuple[str, ...]:
    """Pass 2: copy the encoded video and the input's audio tracks into ``dst``, interleaved.

    Returns "copy" or "aac" (re-encoded) per audio track.
    """
    path = source.info.path
    with av.open(str(video_path), "r") as video_in, open_input(path) as audio_in, av.open(
        str(dst), "w", format=container_format, container_options=options
    ) as out:
        video_src = video_in.streams.video[0]
        video_dst = out.add_stream_from_template(video_src)
        tracks = {
            stream.index: _add_audio_output(out, stream, source.origin_s)
            for stream in audio_in.streams.audio
        }
        for track in tracks.values():
            if not track.copy:
                logger.info(
                    "%s: re-encoding %s audio to AAC (MP4 does not carry it)",
                    path.name, track.source.codec_context.codec.canonical_name,
                )  # fmt: skip
        audio_streams = [track.source for track in tracks.values()]
        packets = heapq.merge(
            _timed_packets(video_in, [video_src], _VIDEO_SOURCE),
            _timed_packets(audio_in, audio_streams, _AUDIO_SOURCE),
        )
        try:
            for _, origin, _, packet in packets:
                if origin == _AUDIO_SOURCE:
                    _mux_audio_packet(out, tracks[packet.stream.index], packet)
                elif packet.size:  # empty packets mark the end of the stream
                    packet.stream = video_dst
                    out.mux(packet)
            for track in tracks.values():
                if not track.copy:
                    out.mux(track.target.encode(None))  # flush the AAC encoder
        except av.FFmpegError as exc:
            raise CodeFormerError(
                f"{path.name}: cannot copy or re-encode the audio: {ffmpeg_reason(exc)}"
            ) from exc
    return tuple("copy" if track.copy else "aac" for track in tracks.values())


def _mux_audio_packet(
    out: av.container.OutputContainer, track: _AudioOut, packet: av.Packet
) -> None:
    if track.copy:
        if not packet.size:
            return  # demuxer's end-of-stream marker
        if track.shift:
            packet.pts = None if packet.pts is None else packet.pts - track.shift
            packet.dts = None if packet.dts is None else packet.dts - track.shift
        packet.stream = track.target
        out.mux(packet)
        return
    try:
        frames = packet.decode()
    except av.error.InvalidDataError:
        return  # a damaged audio packet: drop it, as FFmpeg does
    for frame in frames:
        if track.shift and frame.pts is not None:
            frame.pts -= track.shift
        out.mux(track.target.encode(frame))
