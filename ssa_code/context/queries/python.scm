; Python tags: definitions, references (calls, attribute use, base classes), imports.
(class_definition name: (identifier) @name) @definition.class
(function_definition name: (identifier) @name) @definition.function
(module (assignment left: (identifier) @name) @definition.constant)
(module (expression_statement (assignment left: (identifier) @name) @definition.constant))
(decorated_definition definition: (class_definition name: (identifier) @name)) @definition.class
(call function: (identifier) @name) @reference.call
(call function: (attribute attribute: (identifier) @name)) @reference.call
(class_definition superclasses: (argument_list (identifier) @name) @reference.class)
(decorator (identifier) @name) @reference.call
(type (identifier) @name) @reference.type
(import_statement name: (dotted_name) @import)
(import_statement name: (aliased_import name: (dotted_name) @import))
(import_from_statement module_name: (dotted_name) @import)
(import_from_statement module_name: (relative_import) @import)
(import_from_statement module_name: (_) @import name: (dotted_name) @import.member)
(import_from_statement module_name: (_) @import name: (aliased_import name: (dotted_name) @import.member))
(import_from_statement name: (dotted_name (identifier) @name) @reference.import)
