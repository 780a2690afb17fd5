// The Access page's picker: users, groups and teams searched as you type (select2, which the
// admin ships), from governance.access_admin.holders_view.
'use strict';
{
    const $ = django.jQuery;
    $(function() {
        const picker = $('#id_holder');
        picker.select2({
            ajax: {url: picker.data('url'), dataType: 'json', delay: 200,
                   data: (params) => ({term: params.term || ''})},
            placeholder: picker.data('placeholder'),
            allowClear: true,
            width: '30em',
        });
    });
}
