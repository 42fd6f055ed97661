// Idle stop, as Jibri does: the recording ends by itself once the room has
// been empty, without a publisher, or all muted for as long as the request
// says. The room model is the same for synthetic and LiveKit rooms, so one
// watcher serves both; it says IDLE_STOP on the console and the recorder ends
// the recording (COMPLETE, stopped_by idle, with the reason).

const EVERY_MS = 250;

// Which idle conditions hold now, by name.
function conditions(room) {
  const people = room.list;
  const tracks = people.flatMap((p) => [...p.tracks.values()]);
  return {
    empty: people.length === 0,
    no_publisher: tracks.length === 0,
    all_muted: tracks.length > 0 && tracks.every((t) => t.muted),
  };
}

const REASONS = {
  empty: (s) => `no one in the room for ${s} s`,
  no_publisher: (s) => `no one published for ${s} s`,
  all_muted: (s) => `everyone muted for ${s} s`,
};

// Watches `room` from now on; `limits` is the request's idleStop (seconds per condition, each optional).
export function watchIdle(room, limits) {
  const seconds = {
    empty: limits.emptySeconds,
    no_publisher: limits.noPublisherSeconds,
    all_muted: limits.allMutedSeconds,
  };
  const since = {};
  const timer = setInterval(() => {
    const now = performance.now();
    for (const [name, holds] of Object.entries(conditions(room))) {
      if (!holds || !seconds[name]) {
        delete since[name];
        continue;
      }
      since[name] ??= now;
      if (now - since[name] >= seconds[name] * 1000) {
        clearInterval(timer);
        console.log(`IDLE_STOP ${JSON.stringify({ condition: name, reason: REASONS[name](seconds[name]) })}`);
        return;
      }
    }
  }, EVERY_MS);
}
