"""How a video's packets are decoded: by the stream's own decoder, or, for MJPEG, on several
threads at once.

FFmpeg decodes MJPEG, the usual lab camera codec, on the calling thread alone: it has no decoder
threads, and that capped one video near 60 windows/s at 720p (`ethoprism bench host`). Every
MJPEG packet is a whole picture, so each thread of the frame pool (`extract.framepool`) decodes
packets with a decoder of its own. What FFmpeg's MJPEG decoder carries from one packet to the
next must then travel with the packets: the container's parameters (copied into each decoder)
and the quantisation and Huffman tables, which a stream may define once (`MjpegTables`).
"""

from __future__ import annotations

import av

from ethoprism.extract.framepool import PerThread

# FFmpeg's codec capabilities (AV_CODEC_CAP_*): a decoder with threads of its own, or one that
# holds frames back (so a packet's picture may come out with a later packet)
_OWN_THREADS_OR_DELAY = (1 << 12) | (1 << 13) | (1 << 15) | (1 << 5)
# Those whose packets a standalone decoder takes as the stream's would: others read more of the
# container's parameters than `packet_decoder` copies (rawvideo its pixel format, bits per
# sample and palette), or keep other state from packet to packet.
_PARALLEL_CODECS = ("mjpeg",)
_DQT, _DHT, _SOS = 0xDB, 0xC4, 0xDA  # JPEG markers: quantisation, Huffman tables; scan start


def parallel_packets(codec: av.CodecContext) -> bool:
    """Whether a stream's packets may be decoded on several threads, each by a decoder of its
    own: MJPEG (intra-only, no decoder threads or delay in FFmpeg)."""
    return (
        codec.name in _PARALLEL_CODECS
        and codec.codec.intra_only
        and not codec.codec.capabilities & _OWN_THREADS_OR_DELAY
    )


def packet_decoder(codec: av.CodecContext, workers: int):
    """(prepare, decode, threads) for the packets of a stream whose decoder is `codec`.

    `prepare(packet)` runs on the demuxing thread in packet order and returns what `decode`
    takes; `decode(prepared)` returns (packet, its frames, or the FFmpegError decoding it
    raised) and may run on `threads` threads at once. Several only where `parallel_packets`
    allows: each thread then decodes with a decoder of its own, configured as `codec`."""
    if workers <= 1 or not parallel_packets(codec):

        def decode_serially(prepared):
            packet, _ = prepared
            return _decoded(packet, packet, codec)

        return (lambda packet: (packet, packet)), decode_serially, 1

    def make():
        own = av.CodecContext.create(codec.name, "r")
        own.width, own.height, own.extradata = codec.width, codec.height, codec.extradata
        # MJPEG's field order for interlaced pictures comes from these
        own.codec_tag, own.field_order = codec.codec_tag, codec.field_order
        own.options = dict(codec.options)  # lowres, where the preprocessing asks for it
        return own

    decoders, tables = PerThread(make), MjpegTables()

    def decode(prepared):
        packet, payload = prepared
        return _decoded(packet, payload, decoders.get())

    return (lambda packet: (packet, tables.complete(packet))), decode, workers


def _decoded(packet, payload, decoder):
    if packet.is_corrupt:
        return packet, []  # refused in order by the caller, never decoded
    try:
        return packet, decoder.decode(payload)
    except av.FFmpegError as e:
        return packet, e


class MjpegTables:
    """The quantisation (DQT) and Huffman (DHT) tables an MJPEG stream defined last.

    FFmpeg's MJPEG decoder keeps both from one picture to the next, so a stream may define them
    in its first picture only (and AVI's MJPEG usually leaves out Huffman tables, meaning the
    standard ones). A decoder that sees only some of the packets must be told what the others
    defined: a packet without a kind of table that an earlier packet defined gets that earlier
    definition put in front of its own segments. Where a picture redefines only some tables of a
    kind, the others still come from the last picture that defined that kind.
    """

    def __init__(self):
        self._last: dict[int, bytes] = {}  # marker -> its segments in the last picture with any

    def complete(self, packet: av.Packet) -> av.Packet:
        """`packet`, or a copy with the tables it relies on but lacks (same times)."""
        found = jpeg_tables(memoryview(packet))
        if found is None:  # not a JPEG picture as expected: the decoder will say what it is
            return packet
        self._last.update(found)
        missing = b"".join(v for k, v in self._last.items() if k not in found)
        if not missing or packet.is_discard:  # a discarded picture's frame is never used
            return packet
        data = bytes(packet)
        out = av.Packet(data[:2] + missing + data[2:])  # right after the start of image
        out.pts, out.dts = packet.pts, packet.dts
        if packet.time_base is not None:
            out.time_base = packet.time_base
        return out


def jpeg_tables(data) -> dict[int, bytes] | None:
    """The DQT and DHT segments before a JPEG picture's first scan, by marker (each marker's
    segments in order); None where `data` does not read as a JPEG picture."""
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    found: dict[int, bytes] = {}
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte before the marker
            i += 1
            continue
        if marker == _SOS:
            return found
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        end = i + 2 + (data[i + 2] << 8 | data[i + 3])
        if marker in (_DQT, _DHT):
            found[marker] = found.get(marker, b"") + bytes(data[i:end])
        i = end
    return None
