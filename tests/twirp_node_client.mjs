// LiveKit's Node SDK (livekit-server-sdk's EgressClient, speaking Twirp in JSON) recording a room through
// this service, for tests/test_twirp.py. Usage: node twirp_node_client.mjs URL API_KEY API_SECRET ROOM.
// Prints one JSON line per step: {"step": ..., "info": EgressInfo JSON} or {"step": ..., "error": {...}}.
import {
  EgressClient, EgressStatus, EncodedFileOutput, EncodedFileType, EncodingOptions, TwirpError,
} from 'livekit-server-sdk';

const [url, apiKey, apiSecret, room] = process.argv.slice(2);
const client = new EgressClient(url, apiKey, apiSecret);
const report = (step, info) => console.log(JSON.stringify({ step, info: info.toJson() }));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(egressId, status) {
  for (let i = 0; i < 300; i += 1) {
    const [info] = await client.listEgress({ egressId });
    if (info.status === status) return info;
    await sleep(200);
  }
  throw new Error(`${egressId} never reached ${EgressStatus[status]}`);
}

const started = await client.startRoomCompositeEgress(
  room,
  { file: new EncodedFileOutput({ fileType: EncodedFileType.MP4, filepath: 'node/{room_name}.mp4' }) },
  { layout: 'grid', encodingOptions: new EncodingOptions({ width: 320, height: 180 }) },
);
report('started', started);
await until(started.egressId, EgressStatus.EGRESS_ACTIVE);
report('active', (await client.listEgress({ roomName: room, active: true }))[0]);
report('layout', await client.updateLayout(started.egressId, 'speaker'));
await sleep(3000);
report('stopped', await client.stopEgress(started.egressId));
report('complete', await until(started.egressId, EgressStatus.EGRESS_COMPLETE));
try {
  await client.stopEgress(started.egressId);
} catch (err) {
  if (!(err instanceof TwirpError)) throw err;
  console.log(JSON.stringify({ step: 'stop again', error: { status: err.status, code: err.code, message: err.message } }));
}
