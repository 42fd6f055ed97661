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
  // The recorder calls window.compositorSetLayout(name) on UpdateLayout.
  onLayoutChanged: (fn) => layoutListeners.push(fn),
};

window.compositorSetLayout = (name) => {
  for (const fn of layoutListeners) fn(name);
};
