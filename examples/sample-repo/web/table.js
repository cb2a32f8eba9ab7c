const { formatPrice, pad } = require("./format");

class StockTable {
  constructor(rows) {
    this.rows = rows;
  }

  render() {
    return this.rows.map((r) => pad(r.name, 12) + formatPrice(r.priceCents)).join("\n");
  }
}

module.exports = { StockTable };
