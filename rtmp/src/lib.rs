//! `dialtone-rtmp`: the RTMP side of the gateway, sans-IO.
