import { StockRow, fetchJson } from "./http";

export interface StockSummary {
  totalCents: number;
  rows: StockRow[];
}

export async function loadSummary(base: string): Promise<StockSummary> {
  const rows = await fetchJson<StockRow[]>(base + "/stock");
  const totalCents = rows.reduce((sum, r) => sum + r.priceCents * r.quantity, 0);
  return { totalCents, rows };
}
