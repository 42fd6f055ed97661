// The recorder's side of the page contract, compatible with LiveKit's
// @livekit/egress-sdk: the page reads url, token and layout from its query
// string, and prints START_RECORDING / END_RECORDING on the console.

const params = new URLSearchParams(location.search);
const layoutListeners = [];

export const egress = {
  params,
  getRoomURL: () => params.get('url') || '',
  getAccessToken: () => params.get('token') || '',
  getLayout: () => params.get('layout') || '',
  startRecording: () => console.log('START_RECORDING'),
  endRecording: () => console.log('END_RECORDING'),
  // The recorder calls window.compositorSetLayout(name) on UpdateLayout (name as LiveKit spells it: grid-light).
  onLayoutChanged: (fn) => layoutListeners.push(fn),
};

// Resolves once every listener has applied the layout and it is painted.
window.compositorSetLayout = async (name) => {
  await Promise.all(layoutListeners.map((fn) => fn(name)));
  for (let i = 0; i < 2; i += 1) await new Promise((r) => requestAnimationFrame(() => r()));
};
