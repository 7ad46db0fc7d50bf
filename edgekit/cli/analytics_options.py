"""``run``'s tracking, line/zone and event options, and what they build (kept apart from run.py)."""

from __future__ import annotations

import functools

import click

OPTIONS = (
    click.option("--track", is_flag=True, help="Give each detection a track_id stable across frames (ByteTrack)."),
    click.option("--line", "lines", multiple=True, metavar="[SOURCE:]NAME=x1,y1,x2,y2",
                 help="Count tracks crossing this line (source pixels; 'in' is left to right of x1,y1 -> x2,y2). "
                      "Repeatable; implies --track."),
    click.option("--zone", "zones", multiple=True, metavar="[SOURCE:]NAME=x1,y1,x2,y2,x3,y3,...",
                 help="Report occupancy, entries, exits and dwell in this polygon. Repeatable; implies --track."),
    click.option("--analytics", "analytics_file", type=click.Path(dir_okay=False), metavar="FILE",
                 help="Lines, zones and tracker settings from a YAML or JSON file (see README); implies --track."),
    click.option("--track-started", is_flag=True, help="Also an event for each new track."),
    click.option("--mqtt", metavar="URL", envvar="EDGEKIT_MQTT",
                 help="Send events to mqtt://[user:pass@]host[:port]/PREFIX (mqtts:// for TLS), QoS 1, topic "
                      "PREFIX/DEVICE/SOURCE/EVENT [env EDGEKIT_MQTT]."),
    click.option("--mqtt-ca", type=click.Path(dir_okay=False), metavar="FILE",
                 help="CA certificate(s) of an mqtts:// broker (default: the system's)."),
    click.option("--mqtt-detections", is_flag=True, help="Also publish each frame's detections (QoS 0, not spooled)."),
    click.option("--webhook", "webhooks", multiple=True, metavar="URL", envvar="EDGEKIT_WEBHOOK",
                 help="POST each event as JSON to this URL, retried with back-off. Repeatable [env EDGEKIT_WEBHOOK]."),
    click.option("--device-name", metavar="NAME", help="This device in topics and events [the host name]."),
    click.option("--spool", "spool_dir", type=click.Path(file_okay=False), metavar="DIR",
                 help="Keep undelivered events here [$STATE_DIRECTORY/spool or ~/.local/state/edgekit/spool]."),
    click.option("--spool-max-mb", type=click.FloatRange(min=0, min_open=True), default=100.0, show_default=True,
                 help="Spool size limit; past it the oldest events are dropped (logged and counted)."),
    click.option("--spool-max-age", type=click.FloatRange(min=0, min_open=True), default=168.0, show_default=True,
                 metavar="HOURS", help="Events older than this are dropped from the spool."),
)
PARAMS = ("track", "lines", "zones", "analytics_file", "track_started", "mqtt", "mqtt_ca", "mqtt_detections",
          "webhooks", "device_name", "spool_dir", "spool_max_mb", "spool_max_age")


def analytics_options(f):
    """Add the tracking, analytics and event options to a command."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    for option in reversed(OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def analytics_from_options(track=False, lines=(), zones=(), analytics_file=None, track_started=False, mqtt=None,
                           mqtt_ca=None, mqtt_detections=False, webhooks=(), device_name=None, spool_dir=None,
                           spool_max_mb=100.0, spool_max_age=168.0):
    """(AnalyticsConfig or None, EventSink or None) from the options; UsageError for a bad one."""
    from edgekit.errors import UsageError

    config = None
    if track or lines or zones or analytics_file or track_started:
        from edgekit.analytics.config import build

        config = build(lines, zones, analytics_file, track_started or None)
    if mqtt_ca and not mqtt:
        raise UsageError("--mqtt-ca needs --mqtt")
    if mqtt_detections and not mqtt:
        raise UsageError("--mqtt-detections needs --mqtt")
    if device_name is not None:
        from edgekit.events.delivery import safe_name

        if safe_name(device_name) != device_name:
            raise UsageError(f"--device-name {device_name!r}: use letters, digits, '-', '_' and '.'")
    senders = []
    if mqtt:
        from edgekit.events.mqtt import MqttSender

        senders.append(MqttSender(mqtt, mqtt_ca, device_name, mqtt_detections))
    if webhooks:
        from edgekit.events.webhook import WebhookSender

        senders += [WebhookSender(url, device_name) for url in webhooks]
    if not senders:
        return config, None
    from edgekit.events.delivery import EventSink

    return config, EventSink(senders, spool_dir, int(spool_max_mb * 1e6), spool_max_age * 3600.0)
