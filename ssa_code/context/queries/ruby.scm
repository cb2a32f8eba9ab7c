; Ruby tags.
(class name: (constant) @name) @definition.class
(class name: (scope_resolution name: (constant) @name)) @definition.class
(module name: (constant) @name) @definition.module
(method name: (_) @name) @definition.method
(singleton_method name: (_) @name) @definition.method
(assignment left: (constant) @name) @definition.constant
(call method: (identifier) @name) @reference.call
(superclass (constant) @name) @reference.class
(call receiver: (constant) @name) @reference.class
(call method: (identifier) @_req arguments: (argument_list (string (string_content) @import)) (#match? @_req "^require(_relative)?$"))
