# Produced by a schema compiler; marked linguist-generated in .gitattributes.
SCHEMA = {"item": ["sku", "name", "price_cents", "quantity"]}
