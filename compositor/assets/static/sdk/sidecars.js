// The recorder's participants and speakers sidecars: who joins and leaves
// the room model, and whose speaking detection turns on and off, told on the
// console as ROOM_EVENT {"kind", "identity", "name", "at"} (`at`:
// performance.now() in ms; the recorder relates this clock to the file's).
//
// The room model is the same for synthetic and LiveKit rooms, so one
// reporter serves both. It follows what layouts see: whoever the participant
// filter leaves out never appears (a filter change reads as leaving or
// joining). Speaking is the detected state (participant.speaking), not the
// layout's active speaker with its 1 s hold.

function say(kind, p) {
  const event = { kind, identity: p.identity, name: p.name, at: performance.now() };
  console.log(`ROOM_EVENT ${JSON.stringify(event)}`);
}

// Reports everyone now in `room` (and who of them speaks), then every change.
export function reportRoom(room) {
  const joined = (p) => {
    say('joined', p);
    if (p.speaking) say('speaking', p);
  };
  for (const p of room.list) joined(p);
  room.addEventListener('participantJoined', (e) => joined(e.detail.participant));
  room.addEventListener('participantLeft', (e) => say('left', e.detail.participant));
  room.addEventListener('speakingChanged', (e) => {
    const p = e.detail.participant;
    say(p.speaking ? 'speaking' : 'silent', p);
  });
}
