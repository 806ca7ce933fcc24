-- Recent sensor faults, for the operators' list of devices that need attention
-- (GET /v1/devices/attention): a tilted level sensor, one that hears no echo, or one that
-- reports a distance beyond the container's depth. Partial, so heartbeats and battery reports,
-- most of the table, cost it nothing.

CREATE INDEX device_events_faults_idx ON device_events (ts)
    WHERE event IN ('tilted', 'no_echo', 'distance_beyond_depth');
