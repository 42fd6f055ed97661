"""The ingress worker (`compositor ingress`): one external stream (RTMP, WHIP, a URL) brought into a LiveKit
room as a participant's tracks."""
