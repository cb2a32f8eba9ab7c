// Formatting helpers shared by the web pages.
function formatPrice(cents) {
  return (cents / 100).toFixed(2);
}

function pad(text, width) {
  return String(text).padStart(width, " ");
}

module.exports = { formatPrice, pad };
