// Overlays the base page may carry (title, logo, name labels are plain HTML
// and CSS); the clock is the one that needs a script.

export function startClock(el = document.querySelector('.ov-clock')) {
  if (!el) return;
  const format = new Intl.DateTimeFormat('en-GB', {
    timeZone: el.dataset.timeZone || 'UTC', hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23',
  });
  const tick = () => { el.textContent = format.format(new Date()); };
  tick();
  // A quarter second keeps the shown second within 250 ms of the wall clock.
  setInterval(tick, 250);
}
