package main

import (
	"fmt"

	"example.com/sample/go/shapes"
)

func main() {
	all := []shapes.Shape{shapes.Circle{Radius: 1}, shapes.Circle{Radius: 2}}
	fmt.Println(shapes.TotalArea(all))
}
