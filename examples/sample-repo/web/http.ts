export interface StockRow {
  name: string;
  priceCents: number;
  quantity: number;
}

export async function fetchJson<T>(url: string): Promise<T> {
  const response = await fetch(url);
  return (await response.json()) as T;
}